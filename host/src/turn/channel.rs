//! CHANNEL-NUMBER with RFC 5766's range, 0x4000-0x7FFF. stun_codec's own attribute
//! takes RFC 8656's narrower 0x4000-0x4FFF and refuses what coturn's clients (and most
//! deployed ones) send, so the server decodes this one instead.

use bytecodec::fixnum::{U32beDecoder, U32beEncoder};
use bytecodec::{ByteCount, Decode, Encode, Eos, ErrorKind, Result, SizedEncode, TryTaggedDecode};
use stun_codec::{Attribute, AttributeType};

/// A channel number, 0x4000-0x7FFF.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChannelNumber(u16);

impl ChannelNumber {
    pub const CODEPOINT: u16 = 0x000C;

    pub fn new(n: u16) -> Result<Self> {
        if !(0x4000..=0x7fff).contains(&n) {
            return Err(bytecodec::Error::from(ErrorKind::InvalidInput));
        }
        Ok(ChannelNumber(n))
    }

    pub fn value(self) -> u16 {
        self.0
    }
}

impl Attribute for ChannelNumber {
    type Decoder = ChannelNumberDecoder;
    type Encoder = ChannelNumberEncoder;

    fn get_type(&self) -> AttributeType {
        AttributeType::new(Self::CODEPOINT)
    }
}

/// The number in the high 16 bits, 16 bits reserved (RFC 5766 §14.1).
#[derive(Debug, Default)]
pub struct ChannelNumberDecoder(U32beDecoder);

impl Decode for ChannelNumberDecoder {
    type Item = ChannelNumber;

    fn decode(&mut self, buf: &[u8], eos: Eos) -> Result<usize> {
        self.0.decode(buf, eos)
    }

    fn finish_decoding(&mut self) -> Result<ChannelNumber> {
        ChannelNumber::new((self.0.finish_decoding()? >> 16) as u16)
    }

    fn requiring_bytes(&self) -> ByteCount {
        self.0.requiring_bytes()
    }

    fn is_idle(&self) -> bool {
        self.0.is_idle()
    }
}

impl TryTaggedDecode for ChannelNumberDecoder {
    type Tag = AttributeType;

    fn try_start_decoding(&mut self, t: AttributeType) -> Result<bool> {
        Ok(t.as_u16() == ChannelNumber::CODEPOINT)
    }
}

#[derive(Debug, Default)]
pub struct ChannelNumberEncoder(U32beEncoder);

impl Encode for ChannelNumberEncoder {
    type Item = ChannelNumber;

    fn encode(&mut self, buf: &mut [u8], eos: Eos) -> Result<usize> {
        self.0.encode(buf, eos)
    }

    fn start_encoding(&mut self, item: ChannelNumber) -> Result<()> {
        self.0.start_encoding(u32::from(item.0) << 16)
    }

    fn requiring_bytes(&self) -> ByteCount {
        self.0.requiring_bytes()
    }

    fn is_idle(&self) -> bool {
        self.0.is_idle()
    }
}

impl SizedEncode for ChannelNumberEncoder {
    fn exact_requiring_bytes(&self) -> u64 {
        self.0.exact_requiring_bytes()
    }
}
