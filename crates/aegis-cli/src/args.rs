//! A small flag parser shared by the commands: `--flag value`,
//! `--flag=value`, switches, and positional arguments. Bad input is a
//! [`Usage`] error: the command prints it with its usage and exits 2.

use std::time::Duration;

/// A command line that does not fit the usage; the message says why
/// (empty when `--help` was asked for).
#[derive(Debug)]
pub struct Usage(pub String);

impl Usage {
    /// `--help`: not an error.
    pub fn help() -> Self {
        Usage(String::new())
    }

    /// Whether this is `--help` rather than a mistake.
    pub fn is_help(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One parsed flag or positional argument.
#[derive(Debug, PartialEq, Eq)]
pub enum Arg {
    /// `--name` with its value, if the flag takes one.
    Flag(String, Option<String>),
    /// A positional argument.
    Positional(String),
}

/// Splits `args` into flags and positionals; `takes_value` says which
/// flags take a value. `-h`/`--help` anywhere is [`Usage::help`].
///
/// # Errors
/// A flag that needs a value without one, or `--flag=value` for a switch.
pub fn split(args: &[String], takes_value: &[&str]) -> Result<Vec<Arg>, Usage> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "-h" || arg == "--help" {
            return Err(Usage::help());
        }
        if let Some(flag) = arg.strip_prefix("--") {
            let (name, inline) = match flag.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (flag, None),
            };
            let name = format!("--{name}");
            if takes_value.contains(&name.as_str()) {
                let value = match inline {
                    Some(v) => v,
                    None => it
                        .next()
                        .cloned()
                        .ok_or_else(|| Usage(format!("{name} needs a value")))?,
                };
                out.push(Arg::Flag(name, Some(value)));
            } else if inline.is_some() {
                return Err(Usage(format!("{name} takes no value")));
            } else {
                out.push(Arg::Flag(name, None));
            }
        } else if arg.starts_with('-') && arg.len() > 1 {
            return Err(Usage(format!("unknown argument {arg:?}")));
        } else {
            out.push(Arg::Positional(arg.clone()));
        }
    }
    Ok(out)
}

/// A duration like `90d`, `12h`, `30m`, `10s` or `500ms`.
///
/// # Errors
/// Anything else, named.
pub fn duration(flag: &str, text: &str) -> Result<Duration, Usage> {
    let bad = || {
        Usage(format!(
            "{flag} {text:?}: expected a number and a unit, like 90d, 12h, 30m, 10s or 500ms"
        ))
    };
    let digits = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(digits);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let secs = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => n,
        "m" => n.checked_mul(60).ok_or_else(bad)?,
        "h" => n.checked_mul(3600).ok_or_else(bad)?,
        "d" => n.checked_mul(86_400).ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    if secs == 0 {
        return Err(Usage(format!("{flag} {text:?}: must be more than zero")));
    }
    Ok(Duration::from_secs(secs))
}

/// A positive whole number.
///
/// # Errors
/// Anything else, named.
pub fn count(flag: &str, text: &str) -> Result<u64, Usage> {
    match text.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(Usage(format!(
            "{flag} {text:?}: expected a whole number above 0"
        ))),
    }
}

/// `ID@HOST:PORT`, or `HOST:PORT` (the ID is then learnt from the
/// certificate the node presents).
///
/// # Errors
/// An empty ID or address.
pub fn peer(flag: &str, text: &str) -> Result<(Option<String>, String), Usage> {
    match text.split_once('@') {
        Some((id, addr)) if !id.is_empty() && !addr.is_empty() => {
            Ok((Some(id.to_owned()), addr.to_owned()))
        }
        Some(_) => Err(Usage(format!(
            "{flag} {text:?}: expected ID@HOST:PORT or HOST:PORT"
        ))),
        None if !text.is_empty() => Ok((None, text.to_owned())),
        None => Err(Usage(format!("{flag} needs a value"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn flags_values_and_positionals() {
        let parsed = split(
            &strings(&["--dir", "d", "n1", "--json", "--validity=10s", "n2"]),
            &["--dir", "--validity"],
        )
        .unwrap();
        assert_eq!(
            parsed,
            vec![
                Arg::Flag("--dir".into(), Some("d".into())),
                Arg::Positional("n1".into()),
                Arg::Flag("--json".into(), None),
                Arg::Flag("--validity".into(), Some("10s".into())),
                Arg::Positional("n2".into()),
            ]
        );
        assert!(
            split(&strings(&["--dir"]), &["--dir"])
                .unwrap_err()
                .0
                .contains("needs a value")
        );
        assert!(split(&strings(&["--json=1"]), &[]).is_err());
        assert!(split(&strings(&["-x"]), &[]).is_err());
        assert!(
            split(&strings(&["n1", "--help"]), &[])
                .unwrap_err()
                .is_help()
        );
    }

    #[test]
    fn durations() {
        assert_eq!(
            duration("--v", "90d").unwrap(),
            Duration::from_secs(90 * 86_400)
        );
        assert_eq!(
            duration("--v", "12h").unwrap(),
            Duration::from_secs(12 * 3600)
        );
        assert_eq!(duration("--v", "10s").unwrap(), Duration::from_secs(10));
        assert_eq!(
            duration("--v", "500ms").unwrap(),
            Duration::from_millis(500)
        );
        for bad in ["", "10", "d", "10x", "-1s", "0s", "99999999999999999999d"] {
            assert!(duration("--v", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn peers() {
        assert_eq!(
            peer("--peer", "n1@h:1").unwrap(),
            (Some("n1".into()), "h:1".into())
        );
        assert_eq!(peer("--peer", "h:1").unwrap(), (None, "h:1".into()));
        assert!(peer("--peer", "@h:1").is_err());
        assert!(peer("--peer", "n1@").is_err());
    }
}
