use std::time::{Duration, Instant};

use ratatui::backend::TestBackend;
use ratatui::buffer::Buffer;
use ratatui::style::Color;
use ratatui::Terminal;

use super::*;
use crate::cli::top::model::tests::answers;
use crate::cli::top::model::Answers;

/// Draws `screen` on a `w`×`h` test terminal and returns its buffer.
fn render(screen: &Screen, now: Instant, w: u16, h: u16) -> Buffer {
    let mut t = Terminal::new(TestBackend::new(w, h)).expect("test terminal");
    t.draw(|f| draw(f, screen, now)).expect("draw");
    t.backend().buffer().clone()
}

/// The buffer's text, one string per row.
fn lines(b: &Buffer) -> Vec<String> {
    (0..b.area.height)
        .map(|y| {
            (0..b.area.width)
                .map(|x| b.cell((x, y)).map_or(" ", |c| c.symbol()))
                .collect()
        })
        .collect()
}

fn row_with<'a>(lines: &'a [String], needle: &str) -> (usize, &'a String) {
    lines
        .iter()
        .enumerate()
        .find(|(_, l)| l.contains(needle))
        .unwrap_or_else(|| panic!("no row with {needle:?} in:\n{}", lines.join("\n")))
}

/// Cells split on runs of two or more spaces and on borders.
fn words(line: &str) -> Vec<String> {
    line.replace('│', "  ")
        .split("  ")
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

fn screen_after(refreshes: &[Answers], gap: Duration) -> (Screen, Instant) {
    let t0 = Instant::now();
    let mut screen = Screen::new(Duration::from_secs(1));
    let mut at = t0;
    for a in refreshes {
        screen.apply(Ok(a.clone()), at);
        at += gap;
    }
    (screen, at - gap)
}

#[test]
fn header_shows_node_state_and_packet_path() {
    let (screen, now) = screen_after(&[answers(0, 10), answers(0, 30)], Duration::from_secs(2));
    let l = lines(&render(&screen, now, 120, 40));
    assert!(l[0].contains(" proxytun top · node a · up "), "{}", l[0]);
    assert!(
        l[1].contains(
            "state      table v7 · 1 service · 2 instances (1 local) · 1 peer · store local"
        ),
        "{}",
        l[1]
    );
    assert!(
        l[2].contains("path       offload (vnet header, UDP GSO/GRO) "),
        "{}",
        l[2]
    );
    assert!(
        l[3].contains("device     ptun0 mtu 1400 · 3 active flows "),
        "{}",
        l[3]
    );
    assert!(
        l[4].contains("packets/s  from containers 10/s · to containers 0.0/s · to peers 0.0/s · from peers 0.0/s"),
        "{}",
        l[4]
    );
}

#[test]
fn peers_table_shows_endpoint_rtt_and_liveness() {
    let (screen, now) = screen_after(&[answers(0, 0)], Duration::ZERO);
    let b = render(&screen, now, 120, 40);
    let l = lines(&b);
    let (_, head) = row_with(&l, "ENDPOINT");
    assert_eq!(
        words(head),
        ["NAME", "ENDPOINT", "STATE", "RTT", "LAST HEARD"]
    );
    let (y, peer_b) = row_with(&l, "192.0.2.2:50103");
    assert_eq!(
        words(peer_b),
        ["b", "192.0.2.2:50103", "alive", "1.25 ms", "0.3 s ago"]
    );
    let x = peer_b.chars().position(|c| c == 'b').expect("name") as u16;
    assert_eq!(b.cell((x, y as u16)).map(|c| c.fg), Some(Color::Green));
    let (_, peer_c) = row_with(&l, "192.0.2.3:50103");
    assert_eq!(words(peer_c), ["c", "192.0.2.3:50103", "-", "-", "never"]);
    assert!(l.iter().any(|r| r.contains(" Peers (2) ")));
}

#[test]
fn a_down_peer_is_shown_down() {
    let mut a = answers(0, 0);
    a.peers[1]["alive"] = serde_json::json!(false);
    let (screen, now) = screen_after(&[a], Duration::ZERO);
    let l = lines(&render(&screen, now, 120, 40));
    let (_, peer_b) = row_with(&l, "192.0.2.2:50103");
    assert_eq!(words(peer_b)[2], "DOWN");
}

#[test]
fn flows_are_shown_per_service_with_its_instances() {
    let (screen, now) = screen_after(&[answers(0, 0)], Duration::ZERO);
    let l = lines(&render(&screen, now, 120, 40));
    assert!(l
        .iter()
        .any(|r| r.contains(" Flows per service (3 active) ")));
    let (_, head) = row_with(&l, "SERVICE IP");
    assert_eq!(words(head), ["SERVICE", "SERVICE IP", "INSTANCES", "FLOWS"]);
    let (_, web) = row_with(&l, "shop/web");
    assert_eq!(words(web), ["shop/web", "10.30.1.10", "1@a 2@b", "2"]);
    let (_, old) = row_with(&l, "shop/old");
    assert_eq!(words(old), ["shop/old", "-", "none", "1"]);
}

#[test]
fn drops_show_their_rate_and_the_ones_that_rose_stand_out() {
    let (screen, now) = screen_after(&[answers(4, 0), answers(10, 0)], Duration::from_secs(2));
    let b = render(&screen, now, 120, 40);
    let l = lines(&b);
    assert!(
        l.iter()
            .any(|r| r.contains(" Drops (12 in 2 reasons; 1 reason at zero) ")),
        "{}",
        l.join("\n")
    );
    let (y, rose) = row_with(&l, "no_service");
    assert_eq!(words(rose), ["no_service", "10", "3.0/s", "▲"]);
    let x = rose.find("no_service").expect("reason") as u16;
    let cell = b.cell((x, y as u16)).expect("cell");
    assert_eq!(cell.fg, Color::Red);
    assert!(cell.modifier.contains(Modifier::BOLD));
    let (y, flat) = row_with(&l, "ttl");
    assert_eq!(words(flat), ["ttl", "2", "0.0/s"]);
    let x = flat.find("ttl").expect("reason") as u16;
    assert_eq!(b.cell((x, y as u16)).map(|c| c.fg), Some(Color::Reset));
}

#[test]
fn the_status_line_counts_refreshes_and_names_the_keys() {
    let (screen, now) = screen_after(&[answers(0, 0), answers(0, 0)], Duration::from_secs(1));
    let l = lines(&render(&screen, now, 120, 40));
    assert!(
        l[39].starts_with("refresh 2 every 1.0 s · q, Esc or Ctrl-C quits"),
        "{}",
        l[39]
    );
}

#[test]
fn an_unreachable_daemon_is_a_status_line_over_the_last_data() {
    let (mut screen, t) = screen_after(&[answers(0, 0)], Duration::ZERO);
    screen.apply(
        Err(Failure::Unreachable("cannot connect to /run/x.sock".into())),
        t + Duration::from_secs(3),
    );
    let b = render(&screen, t + Duration::from_secs(3), 120, 40);
    let l = lines(&b);
    assert!(
        l[39].starts_with(
            "daemon unreachable: cannot connect to /run/x.sock, retrying every 1.0 s (last answer 3.0 s ago)"
        ),
        "{}",
        l[39]
    );
    assert_eq!(b.cell((0, 39)).map(|c| c.bg), Some(Color::Red));
    // The last data stays, and the title says how old it is.
    row_with(&l, "192.0.2.2:50103");
    assert!(
        l[0].contains(" proxytun top · node a · NOT ANSWERING, data 3.0 s old "),
        "{}",
        l[0]
    );
}

#[test]
fn before_any_answer_the_screen_says_it_waits() {
    let screen = {
        let mut s = Screen::new(Duration::from_millis(500));
        s.apply(
            Err(Failure::Unreachable("no socket".into())),
            Instant::now(),
        );
        s
    };
    let l = lines(&render(&screen, Instant::now(), 80, 12));
    row_with(&l, "waiting for the first answer of the daemon");
    assert!(
        l[11].starts_with("daemon unreachable: no socket, retrying every 0.5 s (no answer yet)"),
        "{}",
        l[11]
    );
}

#[test]
fn a_small_terminal_still_gets_the_status_line() {
    let (screen, now) = screen_after(&[answers(3, 0)], Duration::ZERO);
    let l = lines(&render(&screen, now, 60, 10));
    assert!(l[9].starts_with("refresh 1 every"), "{}", l.join("\n"));
}

#[test]
fn durations_and_rates_read_short() {
    assert_eq!(duration(Duration::from_millis(300)), "0.3 s");
    assert_eq!(duration(Duration::from_secs(42)), "42 s");
    assert_eq!(duration(Duration::from_secs(245)), "4m 05s");
    assert_eq!(duration(Duration::from_secs(7620)), "2h 07m");
    assert_eq!(per_second(None), "-");
    assert_eq!(per_second(Some(2.24)), "2.2/s");
    assert_eq!(per_second(Some(1234.4)), "1234/s");
}
