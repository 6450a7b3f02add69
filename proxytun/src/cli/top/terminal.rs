//! The terminal while `top` runs: raw mode and the alternate screen on the
//! way in, both undone on the way out, however the way out goes (a quit
//! key, an error, a signal or a panic), so the person's shell is never left
//! without echo or on a blank screen.

use std::io::{self, Stdout};
use std::sync::Once;

use anyhow::Context as _;
use crossterm::cursor::Show;
use crossterm::execute;
use crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;

/// The drawing terminal; dropping it gives the terminal back.
pub(super) struct Tui {
    /// Dropped first: ratatui shows the cursor again.
    pub(super) terminal: Terminal<CrosstermBackend<Stdout>>,
    _restore: Restore,
}

impl std::fmt::Debug for Tui {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tui")
    }
}

impl Tui {
    /// Switches stdout's terminal to raw mode and the alternate screen.
    pub(super) fn enter() -> anyhow::Result<Tui> {
        install_panic_hook();
        enable_raw_mode().context("switching the terminal to raw mode")?;
        // From here on, any early return restores what was done so far.
        let restore = Restore;
        execute!(io::stdout(), EnterAlternateScreen)
            .context("switching to the terminal's alternate screen")?;
        let terminal = Terminal::new(CrosstermBackend::new(io::stdout()))
            .context("setting up the terminal")?;
        Ok(Tui {
            terminal,
            _restore: restore,
        })
    }
}

/// Undoes [`Tui::enter`] when dropped.
#[derive(Debug)]
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        restore();
    }
}

/// Raw mode off, the main screen back, the cursor shown. Safe to call more
/// than once (the panic hook and the unwinding both call it). Errors are
/// ignored: this runs on the way out, when nothing better can be done.
fn restore() {
    let _ = disable_raw_mode();
    let _ = execute!(io::stdout(), LeaveAlternateScreen, Show);
}

/// Restores the terminal before the panic message is printed, so the
/// message lands on the main screen where the person can read it instead of
/// on the alternate screen that is about to vanish.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
}
