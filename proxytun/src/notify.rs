//! systemd's readiness protocol (`Type=notify`): `READY=1` once the API
//! accepts connections, `STOPPING=1` when shutdown starts, a `STATUS=` line
//! for `systemctl status`, and watchdog pings when the unit sets
//! `WatchdogSec=`.
//!
//! Outside systemd (`NOTIFY_SOCKET` unset) every call is a no-op, so the
//! daemon runs the same in a terminal, a test or a unit.

use std::time::Duration;

use sd_notify::NotifyState;

/// Tells the supervisor the node is up; `status` is the one-line summary
/// `systemctl status` shows.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells the supervisor shutdown has begun, so it does not count the wait
/// as a hang.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("shutting down")]);
}

/// Pings the watchdog at half its interval while the control runtime
/// runs, when the unit asked for one (`WatchdogSec=`); a wedged runtime
/// stops the pings and systemd restarts the daemon.
pub fn spawn_watchdog() {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = (interval / 2).max(Duration::from_millis(100));
    tracing::info!(?interval, "systemd watchdog enabled");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            send(&[NotifyState::Watchdog]);
        }
    });
}

fn send(state: &[NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!("cannot notify the supervisor (NOTIFY_SOCKET): {e}");
    }
}
