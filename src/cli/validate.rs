//! `netsy --validate FILE`: check a cluster config file (and the TLS and mesh material
//! it names) without starting anything.

use std::path::Path;
use std::process::ExitCode;

use netsy::config::{process_env, Config};

pub fn run(path: &Path) -> ExitCode {
    let checked = Config::load(path, &process_env).map_err(|e| e.to_string()).and_then(|c| {
        netsy::tls::Tls::from_config(&c).map_err(|e| format!("TLS: {e}"))?;
        match &c.mesh {
            Some(m) => netsy::mesh::service::Material::load(m)
                .map(|_| ())
                .map_err(|e| format!("mesh authority: {e}")),
            None => Ok(()),
        }
    });
    match checked {
        Ok(_) => {
            println!("{}: valid", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
