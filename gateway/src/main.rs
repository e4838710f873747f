//! `mec-gateway [serve]` runs the HTTP gateway; `mec-gateway token …` prints a signed JWT.

use std::process::ExitCode;

// glibc's malloc showed as ~12% of the gateway's CPU under load (many small, short-lived
// allocations per request, freed on other threads); mimalloc keeps them thread-local.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use mec_gateway::infra::auth::{mint, TokenSpec};
use mec_gateway::infra::config::{jwt_from_lookup, Config};

const USAGE: &str = "\
usage: mec-gateway [serve]
       mec-gateway token --role ROLE --namespace NAMESPACE_ID [--account ACCOUNT_ID] [--sub SUB] [--ttl SECONDS]

serve   run the HTTP gateway (configured by MEC_* environment variables; see docs/gateway.md)
token   print an HS256 JWT signed with MEC_JWT_SECRET (ROLE: mec_user, mec_service or mec_admin;
        --ttl defaults to 3600; MEC_JWT_AUD, when set, becomes the aud claim)
";

fn env(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.is_empty())
}

fn token(args: &[String]) -> Result<String, String> {
    let mut spec = TokenSpec {
        ttl_seconds: 3600,
        ..Default::default()
    };
    let mut namespace = None;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (flag.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match name {
            "--role" => spec.role = value()?,
            "--namespace" | "--namespace-id" => namespace = Some(value()?),
            "--account" | "--account-id" => spec.account_id = Some(value()?),
            "--sub" => spec.sub = Some(value()?),
            "--ttl" => {
                spec.ttl_seconds = value()?
                    .parse()
                    .map_err(|_| "--ttl takes a number of seconds".to_string())?
            }
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown option {other}\n{USAGE}")),
        }
    }
    spec.namespace_id = namespace.ok_or_else(|| format!("--namespace is required\n{USAGE}"))?;
    let jwt = jwt_from_lookup(&env).map_err(|e| e.to_string())?;
    let secret = jwt
        .secret
        .ok_or_else(|| "MEC_JWT_SECRET is required to sign a token".to_string())?;
    spec.audience = jwt.audience;
    mint(&secret, &spec)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("token") => match token(&args[1..]) {
            Ok(t) => {
                println!("{t}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("mec-gateway token: {e}");
                ExitCode::from(2)
            }
        },
        Some("-h" | "--help" | "help") => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        None | Some("serve") => {
            mec_gateway::init_tracing();
            let config = match Config::from_env() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("mec-gateway: configuration error: {e}");
                    return ExitCode::from(2);
                }
            };
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.enable_all();
            if let Some(n) = config.worker_threads {
                builder.worker_threads(n);
            }
            let rt = match builder.build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("mec-gateway: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(mec_gateway::serve(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "mec-gateway failed");
                    eprintln!("mec-gateway: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(other) => {
            eprintln!("mec-gateway: unknown command {other}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}
