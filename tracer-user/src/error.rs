//! The errors that end a run, and the one place that maps them to an exit status: 2 for bad
//! input (a command-line value, a trace file line), 1 for what stops the tool (privileges, a
//! kernel it cannot run on, an unwritable trace directory) and for anything unexpected.

use std::{fmt, process::ExitCode};

macro_rules! message_error {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, PartialEq, Eq)]
        pub struct $name(pub String);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::error::Error for $name {}
    };
}

message_error!(
    /// A command-line value that does not parse; exit status 2.
    UsageError
);
message_error!(
    /// A trace file line or input path that cannot be read (names the file and line); exit
    /// status 2.
    BadInput
);
message_error!(
    /// What stops the tool from running at all; exit status 1.
    FatalError
);

/// The message to print (one line) and the exit status for an error that ended the run.
pub fn exit_status(error: &anyhow::Error) -> (String, ExitCode) {
    if let Some(usage) = error.downcast_ref::<UsageError>() {
        (usage.to_string(), ExitCode::from(2))
    } else if let Some(bad) = error.downcast_ref::<BadInput>() {
        (bad.to_string(), ExitCode::from(2))
    } else if let Some(fatal) = error.downcast_ref::<FatalError>() {
        (fatal.to_string(), ExitCode::from(1))
    } else {
        (format!("error: {error:#}"), ExitCode::from(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_input_is_2_and_the_rest_is_1() {
        let (message, code) = exit_status(&UsageError("bad --ports".into()).into());
        assert_eq!((message.as_str(), code), ("bad --ports", ExitCode::from(2)));
        let (_, code) = exit_status(&BadInput("f:1: not JSON".into()).into());
        assert_eq!(code, ExitCode::from(2));
        let (_, code) = exit_status(&FatalError("no BTF".into()).into());
        assert_eq!(code, ExitCode::from(1));
        let (message, code) = exit_status(&anyhow::anyhow!("boom"));
        assert_eq!((message.as_str(), code), ("error: boom", ExitCode::from(1)));
    }
}
