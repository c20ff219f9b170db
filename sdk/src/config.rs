//! A plugin's settings as the node hands them over (`google.protobuf.Struct`).

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::Error;

/// The settings of one plugin. Values from the command line arrive as strings, values
/// from the config file with their YAML types; the getters accept both.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config(pub Map<String, Value>);

impl Config {
    /// From the `Configure` request's struct.
    pub fn from_struct(s: Option<&webmesh_api::wkt::Struct>) -> Result<Config, Error> {
        let Some(s) = s else {
            return Ok(Config::default());
        };
        match serde_json::to_value(s) {
            Ok(Value::Object(m)) => Ok(Config(m)),
            Ok(other) => Err(Error::invalid_argument(format!(
                "config: expected an object, got {other}"
            ))),
            Err(e) => Err(Error::invalid_argument(format!("config: {e}"))),
        }
    }

    /// Back into a `google.protobuf.Struct`.
    pub fn to_struct(&self) -> webmesh_api::wkt::Struct {
        serde_json::from_value(Value::Object(self.0.clone())).unwrap_or_default()
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }

    /// A string setting; numbers and booleans are given in their text form.
    pub fn str(&self, key: &str) -> Result<Option<String>, Error> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(Value::Bool(b)) => Ok(Some(b.to_string())),
            Some(other) => Err(Error::invalid_argument(format!(
                "config key {key}: expected a string, got {other}"
            ))),
        }
    }

    pub fn required_str(&self, key: &str) -> Result<String, Error> {
        self.str(key)?
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Error::invalid_argument(format!("config key {key} is required")))
    }

    /// A file setting that defaults to `file` in the plugin's private directory (the
    /// one the node gives it, [`crate::data_dir`]).
    pub fn path_or_default(&self, key: &str, file: &str) -> Result<String, Error> {
        if let Some(p) = self.str(key)?.filter(|s| !s.is_empty()) {
            return Ok(p);
        }
        crate::data_dir()
            .map(|d| d.join(file).display().to_string())
            .ok_or_else(|| {
                Error::invalid_argument(format!(
                    "config key {key} is required when no node gives this plugin a directory \
                     (started by hand)"
                ))
            })
    }

    pub fn u64(&self, key: &str) -> Result<Option<u64>, Error> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            // Struct numbers are doubles on the wire: 7 arrives as 7.0.
            Some(Value::Number(n)) => n
                .as_u64()
                .or_else(|| {
                    n.as_f64()
                        .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= u64::MAX as f64)
                        .map(|f| f as u64)
                })
                .map(Some)
                .ok_or_else(|| bad(key, n)),
            Some(Value::String(s)) => s.trim().parse().map(Some).map_err(|_| bad(key, s)),
            Some(other) => Err(bad(key, other)),
        }
    }

    pub fn bool(&self, key: &str) -> Result<Option<bool>, Error> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::String(s)) => match s.trim() {
                "true" | "1" | "yes" => Ok(Some(true)),
                "false" | "0" | "no" => Ok(Some(false)),
                _ => Err(bad(key, s)),
            },
            Some(other) => Err(bad(key, other)),
        }
    }

    /// The whole map as a typed settings struct.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_value(Value::Object(self.0.clone()))
            .map_err(|e| Error::invalid_argument(format!("config: {e}")))
    }
}

fn bad(key: &str, value: impl std::fmt::Display) -> Error {
    Error::invalid_argument(format!("config key {key}: bad value {value}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn getters_accept_strings_and_typed_values() {
        let c = Config(
            serde_json::json!({"a": "5", "b": 7, "c": "yes", "d": false, "e": [1]})
                .as_object()
                .unwrap()
                .clone(),
        );
        assert_eq!(c.u64("a").unwrap(), Some(5));
        assert_eq!(c.u64("b").unwrap(), Some(7));
        assert_eq!(c.bool("c").unwrap(), Some(true));
        assert_eq!(c.bool("d").unwrap(), Some(false));
        assert_eq!(c.str("b").unwrap().as_deref(), Some("7"));
        assert!(c.str("e").unwrap_err().message.contains("config key e"));
        assert!(c.required_str("zz").unwrap_err().message.contains("zz"));
        // Through the wire (numbers become doubles) the getters read the same.
        let round = Config::from_struct(Some(&c.to_struct())).unwrap();
        assert_eq!(round.u64("b").unwrap(), Some(7));
        assert_eq!(round.str("a").unwrap().as_deref(), Some("5"));
        assert_eq!(round.bool("d").unwrap(), Some(false));
        assert!(round.u64("e").is_err());
    }
}
