//! `netsy --validate FILE`: check a cluster config file (and the TLS and mesh material
//! it names) without starting anything.

use std::path::Path;
use std::process::ExitCode;

use netsy::config::{process_env, Config};

pub fn run(path: &Path) -> ExitCode {
    let checked = Config::load(path, &process_env).map_err(|e| netsy::error_chain(&e)).and_then(|c| {
        netsy::tls::Tls::from_config(&c).map_err(|e| format!("TLS: {}", netsy::error_chain(&e)))?;
        match &c.mesh {
            Some(m) => netsy::mesh::service::Material::load(m)
                .map(|_| ())
                .map_err(|e| format!("mesh authority: {}", netsy::error_chain(&e))),
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
