//! POSIX signals as the API accepts them: names or numbers.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A POSIX signal as the API accepts it: a name (`"SIGTERM"`, `"term"`) or a
/// number (fly-go's kill sends `{"signal": 9}`). Serialized by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signal(pub i32);

const NAMES: &[(&str, i32)] = &[
    ("SIGHUP", 1),
    ("SIGINT", 2),
    ("SIGQUIT", 3),
    ("SIGILL", 4),
    ("SIGTRAP", 5),
    ("SIGABRT", 6),
    ("SIGBUS", 7),
    ("SIGFPE", 8),
    ("SIGKILL", 9),
    ("SIGUSR1", 10),
    ("SIGSEGV", 11),
    ("SIGUSR2", 12),
    ("SIGPIPE", 13),
    ("SIGALRM", 14),
    ("SIGTERM", 15),
    ("SIGCHLD", 17),
    ("SIGCONT", 18),
    ("SIGSTOP", 19),
    ("SIGTSTP", 20),
    ("SIGWINCH", 28),
];

impl Signal {
    pub const INT: Signal = Signal(2);
    pub const KILL: Signal = Signal(9);
    pub const TERM: Signal = Signal(15);

    pub fn number(self) -> i32 {
        self.0
    }

    pub fn name(self) -> Option<&'static str> {
        NAMES
            .iter()
            .find(|(_, n)| *n == self.0)
            .map(|(name, _)| *name)
    }
}

impl std::str::FromStr for Signal {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Ok(number) = text.parse::<i32>() {
            return if (1..=64).contains(&number) {
                Ok(Signal(number))
            } else {
                Err(format!("invalid signal number {number}"))
            };
        }
        let upper = text.to_ascii_uppercase();
        let full = if upper.starts_with("SIG") {
            upper
        } else {
            format!("SIG{upper}")
        };
        NAMES
            .iter()
            .find(|(name, _)| *name == full)
            .map(|(_, n)| Signal(*n))
            .ok_or_else(|| format!("unknown signal {text:?}"))
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "{}", self.0),
        }
    }
}

impl Serialize for Signal {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Signal {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SignalVisitor;
        impl Visitor<'_> for SignalVisitor {
            type Value = Signal;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a signal name like \"SIGTERM\" or a signal number")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Signal, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Signal, E> {
                v.to_string().parse().map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Signal, E> {
                v.to_string().parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_any(SignalVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_names_and_numbers() {
        assert_eq!("SIGTERM".parse::<Signal>().unwrap(), Signal::TERM);
        assert_eq!("int".parse::<Signal>().unwrap(), Signal::INT);
        let s: Signal = serde_json::from_str("9").unwrap();
        assert_eq!(s, Signal::KILL);
        assert!("SIGNOPE".parse::<Signal>().is_err());
        assert_eq!(serde_json::to_string(&Signal::KILL).unwrap(), "\"SIGKILL\"");
    }
}
