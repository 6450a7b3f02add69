//! `proxytun top`: a live view of the node for the person at it: peers
//! with RTT and liveness, flows per service, drop counters with their
//! rates, refreshed from the management socket.
//!
//! Sans-IO like the rest of the project: [`model`] builds what is shown
//! from the API's JSON, [`view`] draws it, and this module is only the loop
//! that joins them to the socket ([`fetch`]) and the terminal
//! ([`terminal`]). A refresh task polls the daemon on its own clock, so a
//! slow or absent daemon never delays a key press.

mod fetch;
mod model;
mod terminal;
mod view;

use std::io::IsTerminal as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use crossterm::event::{Event, EventStream, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use envmgr::api::Client;
use futures::StreamExt as _;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use super::api::Api;
use model::{Answers, Failure, Screen};
use terminal::Tui;

/// The refresh intervals `--interval` accepts, in seconds: faster would
/// load the daemon for nothing a person can read, slower is not live.
const INTERVAL_SECS: std::ops::RangeInclusive<f64> = 0.2..=60.0;

/// `proxytun top`'s options.
#[derive(Debug, Clone, Args)]
pub struct TopArgs {
    /// Seconds between refreshes, from 0.2 to 60.
    #[arg(long, value_name = "SECS", default_value = "1", value_parser = parse_interval)]
    pub interval: Duration,
}

/// `--interval`: seconds, fractions allowed, within [`INTERVAL_SECS`].
fn parse_interval(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds (e.g. 0.5 or 2)"))?;
    if !INTERVAL_SECS.contains(&secs) {
        return Err(format!(
            "{s} s is out of range: the interval must be from {} to {} seconds",
            INTERVAL_SECS.start(),
            INTERVAL_SECS.end()
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Runs the view until a quit key or SIGTERM, SIGHUP or SIGINT; the daemon going away
/// is shown, not an error. Refuses to start without a terminal on stdout,
/// where a one-shot `proxytun status` is what a script wants.
pub async fn run(socket: &Path, args: TopArgs) -> anyhow::Result<()> {
    if !std::io::stdout().is_terminal() {
        anyhow::bail!(
            "`proxytun top` draws on a terminal and stdout is not one; \
             for a one-shot view (or a script) use `proxytun status` or `proxytun status --json`"
        );
    }
    let mut term = signal(SignalKind::terminate()).context("watching SIGTERM")?;
    let mut hup = signal(SignalKind::hangup()).context("watching SIGHUP")?;
    // Ctrl-C arrives as a key in raw mode; this is `kill -INT`.
    let mut int = signal(SignalKind::interrupt()).context("watching SIGINT")?;
    let mut tui = Tui::enter()?;
    let (tx, mut rx) = mpsc::channel(1);
    let refresher = tokio::spawn(refresh(Api(Client::new(socket)), args.interval, tx));
    let mut events = EventStream::new();
    let mut screen = Screen::new(args.interval);
    let result = loop {
        let now = Instant::now();
        if let Err(e) = tui
            .terminal
            .draw(|f| view::draw(f, &screen, now))
            .context("drawing on the terminal")
        {
            break Err(e);
        }
        tokio::select! {
            got = rx.recv() => match got {
                Some((outcome, at)) => screen.apply(outcome, at),
                None => break Err(anyhow::anyhow!("the refresh task stopped")),
            },
            ev = events.next() => match ev {
                Some(Ok(Event::Key(k))) if quits(&k) => break Ok(()),
                // A resize or another key: draw again.
                Some(Ok(_)) => {}
                Some(Err(e)) => break Err(anyhow::Error::from(e).context("reading the terminal")),
                None => break Ok(()),
            },
            _ = term.recv() => break Ok(()),
            _ = hup.recv() => break Ok(()),
            _ = int.recv() => break Ok(()),
        }
    };
    refresher.abort();
    drop(tui);
    result
}

/// Polls the daemon every `interval` and sends each outcome with the
/// moment it arrived; stops when the screen is gone.
async fn refresh(
    api: Api,
    interval: Duration,
    tx: mpsc::Sender<(Result<Answers, Failure>, Instant)>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let outcome = fetch::fetch(&api).await;
        if tx.send((outcome, Instant::now())).await.is_err() {
            return;
        }
    }
}

/// `q`, Esc and Ctrl-C (raw mode turns it into a key, not a signal).
fn quits(k: &KeyEvent) -> bool {
    k.kind == KeyEventKind::Press
        && match k.code {
            KeyCode::Char('q') | KeyCode::Esc => true,
            KeyCode::Char('c') => k.modifiers.contains(KeyModifiers::CONTROL),
            _ => false,
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_is_bounded_with_a_clear_error() {
        assert_eq!(parse_interval("1"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_interval("0.2"), Ok(Duration::from_millis(200)));
        assert_eq!(parse_interval("60"), Ok(Duration::from_secs(60)));
        let low = parse_interval("0.1").expect_err("too fast");
        assert_eq!(
            low,
            "0.1 s is out of range: the interval must be from 0.2 to 60 seconds"
        );
        assert!(parse_interval("61").is_err());
        assert!(parse_interval("NaN").is_err());
        assert!(parse_interval("inf").is_err());
        assert_eq!(
            parse_interval("soon").expect_err("not a number"),
            "\"soon\" is not a number of seconds (e.g. 0.5 or 2)"
        );
    }

    #[test]
    fn q_esc_and_ctrl_c_quit_other_keys_do_not() {
        let key = |code, modifiers| KeyEvent::new(code, modifiers);
        assert!(quits(&key(KeyCode::Char('q'), KeyModifiers::NONE)));
        assert!(quits(&key(KeyCode::Esc, KeyModifiers::NONE)));
        assert!(quits(&key(KeyCode::Char('c'), KeyModifiers::CONTROL)));
        assert!(!quits(&key(KeyCode::Char('c'), KeyModifiers::NONE)));
        assert!(!quits(&key(KeyCode::Char('x'), KeyModifiers::NONE)));
        let mut release = key(KeyCode::Char('q'), KeyModifiers::NONE);
        release.kind = KeyEventKind::Release;
        assert!(!quits(&release));
    }
}
