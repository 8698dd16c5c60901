//! The worker's command line: OS sandbox settings the worker applies in
//! `main` before it starts any thread (so before it can read a frame).

use crate::Layer;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerArgs {
    /// The supervisor's pid, saved before the fork: if the worker's parent
    /// is already someone else, the parent-death signal was armed too late.
    pub ppid: u32,
    /// Unprivileged ids to switch to when started as root.
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// RLIMIT_NOFILE.
    pub nofile: u64,
    /// Layers that must be in force; the worker refuses to run otherwise.
    pub require: Vec<Layer>,
    /// Serve fork requests on fd 3 instead of running a function
    /// (`fn_protocol::zygote`); each child then carries on as a worker.
    pub zygote: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgsError {
    #[error("missing value for {0}")]
    MissingValue(String),
    #[error("invalid value {value:?} for {flag}")]
    Invalid { flag: String, value: String },
    #[error("unknown argument {0:?}")]
    Unknown(String),
    #[error("--ppid is required")]
    NoPpid,
}

impl WorkerArgs {
    pub fn to_args(&self) -> Vec<String> {
        let mut out = vec!["--ppid".to_owned(), self.ppid.to_string()];
        if let Some(uid) = self.uid {
            out.extend(["--uid".to_owned(), uid.to_string()]);
        }
        if let Some(gid) = self.gid {
            out.extend(["--gid".to_owned(), gid.to_string()]);
        }
        out.extend(["--nofile".to_owned(), self.nofile.to_string()]);
        if !self.require.is_empty() {
            let names: Vec<&str> = self.require.iter().map(|l| l.name()).collect();
            out.extend(["--require".to_owned(), names.join(",")]);
        }
        if self.zygote {
            out.push("--zygote".to_owned());
        }
        out
    }

    pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Self, ArgsError> {
        let mut ppid = None;
        let mut parsed = WorkerArgs {
            ppid: 0,
            uid: None,
            gid: None,
            nofile: 1024,
            require: Vec::new(),
            zygote: false,
        };
        let mut it = args.into_iter();
        while let Some(flag) = it.next() {
            let mut value = || {
                it.next()
                    .ok_or_else(|| ArgsError::MissingValue(flag.clone()))
            };
            match flag.as_str() {
                "--zygote" => parsed.zygote = true,
                "--ppid" => ppid = Some(number(&flag, &value()?)?),
                "--uid" => parsed.uid = Some(number(&flag, &value()?)?),
                "--gid" => parsed.gid = Some(number(&flag, &value()?)?),
                "--nofile" => parsed.nofile = number(&flag, &value()?)?,
                "--require" => {
                    let list = value()?;
                    for name in list.split(',').filter(|s| !s.is_empty()) {
                        let layer = Layer::parse(name).ok_or_else(|| ArgsError::Invalid {
                            flag: flag.clone(),
                            value: name.to_owned(),
                        })?;
                        parsed.require.push(layer);
                    }
                }
                _ => return Err(ArgsError::Unknown(flag)),
            }
        }
        parsed.ppid = ppid.ok_or(ArgsError::NoPpid)?;
        Ok(parsed)
    }

    pub fn requires(&self, layer: Layer) -> bool {
        self.require.contains(&layer)
    }
}

fn number<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, ArgsError> {
    value.parse().map_err(|_| ArgsError::Invalid {
        flag: flag.to_owned(),
        value: value.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let args = WorkerArgs {
            ppid: 42,
            uid: Some(65534),
            gid: Some(65534),
            nofile: 256,
            require: vec![Layer::Landlock, Layer::Seccomp],
            zygote: false,
        };
        assert_eq!(WorkerArgs::parse(args.to_args()), Ok(args.clone()));
        let zygote = WorkerArgs {
            zygote: true,
            ..args
        };
        assert_eq!(WorkerArgs::parse(zygote.to_args()), Ok(zygote));
    }

    #[test]
    fn errors_are_precise() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(WorkerArgs::parse(s(&[])), Err(ArgsError::NoPpid));
        assert_eq!(
            WorkerArgs::parse(s(&["--ppid"])),
            Err(ArgsError::MissingValue("--ppid".into()))
        );
        assert!(matches!(
            WorkerArgs::parse(s(&["--ppid", "x"])),
            Err(ArgsError::Invalid { .. })
        ));
        assert!(matches!(
            WorkerArgs::parse(s(&["--ppid", "1", "--require", "moat"])),
            Err(ArgsError::Invalid { .. })
        ));
        assert_eq!(
            WorkerArgs::parse(s(&["--bogus"])),
            Err(ArgsError::Unknown("--bogus".into()))
        );
    }
}
