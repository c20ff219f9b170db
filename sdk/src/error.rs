//! The one error type of plugin calls; it maps onto gRPC status codes.

/// The gRPC status codes a plugin may answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    Unauthenticated,
    FailedPrecondition,
    ResourceExhausted,
    Unavailable,
    Unimplemented,
    Internal,
}

impl Code {
    /// The gRPC numeric code.
    pub fn grpc(self) -> i32 {
        match self {
            Code::InvalidArgument => 3,
            Code::NotFound => 5,
            Code::AlreadyExists => 6,
            Code::PermissionDenied => 7,
            Code::ResourceExhausted => 8,
            Code::FailedPrecondition => 9,
            Code::Unimplemented => 12,
            Code::Internal => 13,
            Code::Unavailable => 14,
            Code::Unauthenticated => 16,
        }
    }

    pub fn from_grpc(code: i32) -> Code {
        match code {
            3 => Code::InvalidArgument,
            5 => Code::NotFound,
            6 => Code::AlreadyExists,
            7 => Code::PermissionDenied,
            8 => Code::ResourceExhausted,
            9 => Code::FailedPrecondition,
            12 => Code::Unimplemented,
            14 => Code::Unavailable,
            16 => Code::Unauthenticated,
            _ => Code::Internal,
        }
    }
}

/// A failed plugin call: a code and a message a person can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub code: Code,
    pub message: String,
}

macro_rules! ctor {
    ($($name:ident => $code:ident),* $(,)?) => {
        impl Error {
            $(pub fn $name(message: impl Into<String>) -> Error {
                Error { code: Code::$code, message: message.into() }
            })*
        }
    };
}

ctor! {
    invalid_argument => InvalidArgument,
    not_found => NotFound,
    already_exists => AlreadyExists,
    permission_denied => PermissionDenied,
    unauthenticated => Unauthenticated,
    failed_precondition => FailedPrecondition,
    resource_exhausted => ResourceExhausted,
    unavailable => Unavailable,
    unimplemented => Unimplemented,
    internal => Internal,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

impl std::error::Error for Error {}

#[cfg(not(target_family = "wasm"))]
impl From<Error> for tonic::Status {
    fn from(e: Error) -> tonic::Status {
        tonic::Status::new(tonic::Code::from(e.code.grpc()), e.message)
    }
}

#[cfg(not(target_family = "wasm"))]
impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Error {
        Error {
            code: Code::from_grpc(s.code() as i32),
            message: s.message().to_string(),
        }
    }
}
