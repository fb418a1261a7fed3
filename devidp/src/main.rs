//! `okta-dev-idp idp --listen ADDR [--demo]`, `okta-dev-idp echo --listen ADDR` and
//! `okta-dev-idp authz --listen ADDR` (the benchmark's ext_authz peer).

mod authz;

use std::process::ExitCode;

use okta_dev_idp::{seed_demo, EchoHandle, IdpHandle, IdpOptions};

const USAGE: &str = "usage:
  okta-dev-idp idp [--listen ADDR] [--demo] [--default-scope SCOPE]...
      Okta-compatible authorization server at http://ADDR/oauth2/default (default 127.0.0.1:9001).
      --demo seeds the demo DCR client and the gateway's introspection client.
      --default-scope adds a scope granted when a token request names none (default: none).
  okta-dev-idp echo [--listen ADDR]
      Echo upstream (default 127.0.0.1:9002): answers 200 with the request's method, path, headers.
  okta-dev-idp authz [--listen ADDR]
      Authorization service for Envoy ext_authz (default 127.0.0.1:9003): answers every request
      200 at once, with an empty body (make bench's lower bound of an ext_authz deployment).
Both run until SIGINT or SIGTERM.";

#[derive(Debug, PartialEq, Eq)]
enum Command {
    Idp {
        listen: String,
        demo: bool,
        default_scopes: Vec<String>,
    },
    Echo {
        listen: String,
    },
    Authz {
        listen: String,
    },
    Help,
}

fn parse(args: &[String]) -> Result<Command, String> {
    let Some((sub, rest)) = args.split_first() else {
        return Err("missing subcommand".into());
    };
    let mut listen = None;
    let mut demo = false;
    let mut default_scopes = Vec::new();
    let mut it = rest.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => it.next().cloned().ok_or(format!("{name} needs a value")),
            }
        };
        match flag {
            "--listen" | "-l" => listen = Some(value("--listen")?),
            "--demo" if sub == "idp" && inline.is_none() => demo = true,
            "--default-scope" if sub == "idp" => default_scopes.push(value("--default-scope")?),
            "-h" | "--help" => return Ok(Command::Help),
            other => return Err(format!("unknown argument '{other}'")),
        }
    }
    match sub.as_str() {
        "idp" => Ok(Command::Idp {
            listen: listen.unwrap_or_else(|| "127.0.0.1:9001".into()),
            demo,
            default_scopes,
        }),
        "echo" => Ok(Command::Echo {
            listen: listen.unwrap_or_else(|| "127.0.0.1:9002".into()),
        }),
        "authz" => Ok(Command::Authz {
            listen: listen.unwrap_or_else(|| "127.0.0.1:9003".into()),
        }),
        "-h" | "--help" | "help" => Ok(Command::Help),
        other => Err(format!("unknown subcommand '{other}'")),
    }
}

/// Waits for SIGINT or SIGTERM.
fn wait_for_signal() -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(signalled())
}

/// Resolves on SIGINT or SIGTERM (inside a tokio runtime).
async fn signalled() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match parse(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("okta-dev-idp: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = match command {
        Command::Help => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Command::Idp {
            listen,
            demo,
            default_scopes,
        } => IdpHandle::spawn_with(
            &listen,
            IdpOptions {
                default_scopes,
                ..IdpOptions::default()
            },
        )
        .and_then(|idp| {
            if demo {
                seed_demo(&idp);
            }
            println!(
                "okta-dev-idp: issuer {}{}",
                idp.issuer(),
                if demo { " (demo clients seeded)" } else { "" }
            );
            wait_for_signal()?;
            drop(idp);
            Ok(())
        }),
        Command::Echo { listen } => EchoHandle::spawn(&listen).and_then(|echo| {
            println!("okta-dev-idp: echo listening on http://{}", echo.addr());
            wait_for_signal()?;
            drop(echo);
            Ok(())
        }),
        Command::Authz { listen } => authz::run(
            &listen,
            |addr| println!("okta-dev-idp: authz (200 to everything) listening on http://{addr}"),
            async {
                let _ = signalled().await;
            },
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("okta-dev-idp: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_commands() {
        assert_eq!(
            parse(&args(&["idp", "--listen", "127.0.0.1:1", "--demo"])),
            Ok(Command::Idp {
                listen: "127.0.0.1:1".into(),
                demo: true,
                default_scopes: vec![],
            })
        );
        assert_eq!(
            parse(&args(&["echo", "--listen=0.0.0.0:2"])),
            Ok(Command::Echo {
                listen: "0.0.0.0:2".into()
            })
        );
        assert_eq!(
            parse(&args(&["idp", "--default-scope", "a", "--default-scope=b"])),
            Ok(Command::Idp {
                listen: "127.0.0.1:9001".into(),
                demo: false,
                default_scopes: vec!["a".into(), "b".into()],
            })
        );
        assert_eq!(
            parse(&args(&["authz"])),
            Ok(Command::Authz {
                listen: "127.0.0.1:9003".into()
            })
        );
        assert!(parse(&args(&["authz", "--demo"])).is_err());
        assert!(parse(&args(&["echo", "--demo"])).is_err());
        assert!(parse(&args(&["idp", "--listen"])).is_err());
        assert!(parse(&args(&["nope"])).is_err());
        assert!(parse(&[]).is_err());
        assert_eq!(parse(&args(&["idp", "--help"])), Ok(Command::Help));
    }
}
