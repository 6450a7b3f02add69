//! `proxytun completions` and `proxytun manpages`: shell completions and
//! man pages made from the clap definitions themselves, so neither can
//! drift from the parser. The package build (scripts/package.sh) runs both
//! on the binary it ships.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap_complete::Shell;
use clap_mangen::Man;

/// Writes the completion script of `shell` for `cmd` (the whole command
/// line, subcommands and their flags) to `out`.
pub fn completions(mut cmd: clap::Command, shell: Shell, out: &mut dyn Write) {
    let name = cmd.get_name().to_owned();
    clap_complete::generate(shell, &mut cmd, name, out);
}

/// Writes one man page per command into `dir`, git-style: `proxytun.1` for
/// the whole tool and `proxytun-<sub>.1` (`proxytun-peer-add.1`, …) for
/// every visible subcommand at every depth, so `man proxytun-attach` works.
/// Returns the files written, the root page last.
pub fn manpages(cmd: clap::Command, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let mut cmd = cmd.disable_help_subcommand(true);
    // Builds the display names (`proxytun-peer-add`) the pages are named by.
    cmd.build();
    let mut written = Vec::new();
    write_pages(&cmd, dir, &mut written)?;
    Ok(written)
}

fn write_pages(cmd: &clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, dir, written)?;
    }
    let man = Man::new(cmd.clone()).manual("proxytun manual");
    let path = dir.join(man.get_filename());
    let mut page = Vec::new();
    man.render(&mut page)
        .with_context(|| format!("render {}", path.display()))?;
    std::fs::write(&path, page).with_context(|| format!("write {}", path.display()))?;
    written.push(path);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> clap::Command {
        clap::Command::new("tool")
            .version("1.0")
            .about("A tool.")
            .subcommand(
                clap::Command::new("peer")
                    .about("Peers.")
                    .subcommand(clap::Command::new("add").about("Add a peer.")),
            )
            .subcommand(clap::Command::new("secret").hide(true))
    }

    #[test]
    fn every_visible_command_gets_a_page_and_hidden_ones_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pages = manpages(sample(), dir.path()).expect("pages");
        let names: Vec<String> = pages
            .iter()
            .filter_map(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["tool-peer-add.1", "tool-peer.1", "tool.1"]);
        let add = std::fs::read_to_string(dir.path().join("tool-peer-add.1")).expect("read");
        assert!(add.contains("Add a peer."), "{add}");
        let root = std::fs::read_to_string(dir.path().join("tool.1")).expect("read");
        assert!(
            root.contains("tool\\-peer"),
            "the root page lists the subcommand: {root}"
        );
    }

    #[test]
    fn completions_know_the_subcommands() {
        let mut out = Vec::new();
        completions(sample(), Shell::Bash, &mut out);
        let script = String::from_utf8(out).expect("utf-8");
        assert!(script.contains("complete -F _tool"), "{script}");
        assert!(script.contains("peer"), "{script}");
    }
}
