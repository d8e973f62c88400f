//! `netsy standby promote`: make a standby cluster writable.

use std::path::Path;
use std::process::ExitCode;

use super::{report, runtime};

/// Asks the standby cluster of `config` to promote itself and waits for its leader to
/// record the promotion (it replays everything the primary archived first).
pub fn promote(config: &Path) -> ExitCode {
    report((|| {
        let file = netsy::config::Config::load_cluster(config).map_err(|e| netsy::error_chain(&e))?;
        let own = netsy::archive::build(&file.storage).map_err(|e| netsy::error_chain(&e))?;
        runtime()?.block_on(async {
            use netsy::archive::standby;
            let failed = |e: standby::StandbyError| format!("promote failed: {}", netsy::error_chain(&e));
            if let Some(p) = standby::promoted(own.as_ref()).await.map_err(failed)? {
                return Ok(format!("already promoted: {}", describe(&p)));
            }
            standby::request_promotion(own.as_ref()).await.map_err(failed)?;
            match standby::wait_promoted(own.as_ref(), standby::PROMOTE_WAIT).await.map_err(failed)? {
                Some(p) => Ok(format!("promoted: {}", describe(&p))),
                None => Err(format!(
                    "no member of standby cluster {} acted on the request within {}s: is it running? The request stays in its storage and is acted on when its leader starts",
                    file.cluster_id,
                    standby::PROMOTE_WAIT.as_secs()
                )),
            }
        })
    })())
}

fn describe(p: &netsy::archive::standby::Promoted) -> String {
    let lag = p.primary_archived.index.saturating_sub(p.primary.index);
    format!(
        "replayed the primary {}'s archive through epoch {} entry {} (revision {}, committed {}); {} archived entries were not replayed",
        p.primary_cluster_id,
        p.primary.epoch,
        p.primary.index,
        p.revision,
        netsy::archive::restore::rfc3339_ms(p.commit_unix_ms),
        lag
    )
}
