//! `check`: one ShouldRateLimit call to a running service, the answer printed as the JSON
//! of `docs/protocol.md` (proto3 JSON, as `POST /json` answers). The exit code carries the
//! decision so a shell script can branch on it.

use std::process::ExitCode;
use std::time::Duration;

use crate::grpc::convert;
use crate::proto::rate_limit_response;
use crate::proto::rate_limit_service_client::RateLimitServiceClient;

use super::{CallError, parse};

/// `check` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The service's gRPC address.
    #[arg(long, env = "RLS_CHECK_ADDR", default_value = "http://127.0.0.1:8081")]
    pub addr: String,

    /// The rate limit domain.
    #[arg(long, env = "RLS_CHECK_DOMAIN", default_value = "kcse")]
    pub domain: String,

    /// One descriptor: `key=value[,key=value...]` (repeatable). A value runs to the next
    /// comma; everything after the first `=` belongs to it.
    #[arg(long = "descriptor", required = true, value_parser = parse::descriptor)]
    pub descriptors: Vec<Vec<(String, String)>>,

    /// The request's hits_addend (0 means 1).
    #[arg(long, default_value_t = 0)]
    pub hits: u32,

    /// How long to wait for the answer.
    #[arg(long, default_value = "5s", value_parser = parse::duration)]
    pub timeout: Duration,
}

/// One ShouldRateLimit call; exit 0 for OK, 2 for OVER_LIMIT, 1 on error.
pub async fn run(args: &Args) -> ExitCode {
    match call(args).await {
        Ok(resp) => {
            let json = convert::response_to_json(&resp);
            println!(
                "{}",
                serde_json::to_string_pretty(&json).unwrap_or_else(|_| json.to_string())
            );
            if resp.overall_code == rate_limit_response::Code::OverLimit as i32 {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn call(args: &Args) -> Result<crate::proto::RateLimitResponse, CallError> {
    let channel = super::connect(&args.addr, Some(args.timeout)).await?;
    let request =
        convert::request_from_pairs(&args.domain, &args.descriptors, args.hits, str::to_owned);
    let resp = RateLimitServiceClient::new(channel)
        .should_rate_limit(request)
        .await
        .map_err(|s| CallError::Status(Box::new(s)))?;
    Ok(resp.into_inner())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::settings::{Cli, Command};

    fn check(args: &[&str]) -> Result<super::Args, clap::Error> {
        let cli = Cli::try_parse_from([&["ironclad-rls", "check"], args].concat())?;
        match cli.command {
            Command::Check(c) => Ok(c),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn descriptors_parse() {
        let c = check(&[
            "--descriptor",
            "endpoint=kcserl,path=/a?b=c",
            "--descriptor",
            "k=",
            "--hits",
            "3",
        ])
        .unwrap();
        assert_eq!(c.descriptors[0][1], ("path".into(), "/a?b=c".into()));
        assert_eq!(c.descriptors[1][0], ("k".into(), String::new()));
        assert_eq!(c.hits, 3);
        assert!(check(&["--descriptor", "novalue"]).is_err());
        assert!(check(&[]).is_err(), "a descriptor is required");
    }

    #[test]
    fn defaults() {
        let c = check(&["--descriptor", "k=v"]).unwrap();
        assert_eq!(c.addr, "http://127.0.0.1:8081");
        assert_eq!(c.domain, "kcse");
        assert_eq!(c.hits, 0);
        assert_eq!(c.timeout, std::time::Duration::from_secs(5));
    }
}
