//! Draws a [`Screen`] into a ratatui frame: the header (node, state, packet
//! path, traffic), the peers, the flows per service, the drop counters and
//! one status line. Only drawing: what the numbers mean is the model's, so
//! the tests read the drawn buffer's text without a terminal.

use std::time::{Duration, Instant};

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, Row, Table, Wrap};
use ratatui::Frame;

use super::model::{Failure, Peer, Rated, Screen, ServiceFlows, Snapshot, TRAFFIC};

/// Rows each table shows at most, so one long list cannot push the drop
/// counters off a small terminal.
const MAX_ROWS: usize = 12;

/// Draws `screen` as of `now` (for the age of the data) into `frame`.
pub fn draw(frame: &mut Frame, screen: &Screen, now: Instant) {
    let area = frame.area();
    let (text, style) = status_line(screen, now);
    // A long error wraps onto up to three lines rather than losing its end.
    let width = usize::from(area.width.max(1));
    let height = text.chars().count().div_ceil(width).clamp(1, 3) as u16;
    let [body, status] =
        Layout::vertical([Constraint::Fill(1), Constraint::Length(height)]).areas(area);
    frame.render_widget(
        Paragraph::new(text).style(style).wrap(Wrap { trim: false }),
        status,
    );
    match &screen.snapshot {
        Some(s) => draw_snapshot(frame, screen, s, body, now),
        None => frame.render_widget(
            Paragraph::new("waiting for the first answer of the daemon…")
                .block(Block::bordered().title(" proxytun top ")),
            body,
        ),
    }
}

fn draw_snapshot(frame: &mut Frame, screen: &Screen, s: &Snapshot, area: Rect, now: Instant) {
    let rows = |n: usize| n.clamp(1, MAX_ROWS) as u16 + 3;
    let [header, peers, services, drops] = Layout::vertical([
        Constraint::Length(6),
        Constraint::Length(rows(s.peers.len())),
        Constraint::Length(rows(s.services.len())),
        Constraint::Min(4),
    ])
    .areas(area);
    frame.render_widget(header_block(screen, s, now), header);
    frame.render_widget(peers_table(&s.peers), peers);
    frame.render_widget(services_table(s), services);
    frame.render_widget(drops_table(s), drops);
}

/// The title says whether the daemon answers; the lines what it runs.
fn header_block<'a>(screen: &Screen, s: &'a Snapshot, now: Instant) -> Paragraph<'a> {
    let dim = Style::new().add_modifier(Modifier::DIM);
    let mut traffic_line = vec![Span::styled("packets/s  ", dim)];
    for (i, ((_, words), r)) in TRAFFIC.iter().zip(&s.traffic).enumerate() {
        let sep = if i == 0 { "" } else { " · " };
        traffic_line.push(Span::raw(format!("{sep}{words} ")));
        traffic_line.push(Span::styled(
            per_second(r.rate),
            Style::new().add_modifier(Modifier::BOLD),
        ));
    }
    let lines = vec![
        Line::from(vec![Span::styled("state      ", dim), Span::raw(&s.state)]),
        Line::from(vec![Span::styled("path       ", dim), Span::raw(&s.path)]),
        Line::from(vec![
            Span::styled("device     ", dim),
            Span::raw(format!("{} · {} active flows", s.device, s.flows_active)),
        ]),
        Line::from(traffic_line),
    ];
    let (daemon, style) = match (&screen.problem, screen.age(now)) {
        (None, _) => ("up".to_owned(), Style::new().add_modifier(Modifier::BOLD)),
        (Some(_), age) => (
            format!(
                "NOT ANSWERING, data {} old",
                age.map_or("-".to_owned(), duration)
            ),
            Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        ),
    };
    Paragraph::new(lines).block(
        Block::bordered()
            .title(format!(" proxytun top · node {} · {daemon} ", s.node))
            .title_style(style),
    )
}

fn header_row(cells: &[&'static str]) -> Row<'static> {
    Row::new(cells.to_vec()).style(Style::new().add_modifier(Modifier::BOLD | Modifier::REVERSED))
}

fn peers_table(peers: &[Peer]) -> Table<'static> {
    let rows: Vec<Row> = peers
        .iter()
        .take(MAX_ROWS)
        .map(|p| {
            let (state, style) = match p.alive {
                Some(true) => ("alive", Style::new().fg(Color::Green)),
                Some(false) => (
                    "DOWN",
                    Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
                ),
                None => ("-", Style::new()),
            };
            Row::new(vec![
                p.name.clone(),
                p.endpoint.clone(),
                state.to_owned(),
                p.rtt_us
                    .map_or("-".to_owned(), |us| format!("{:.2} ms", us as f64 / 1000.0)),
                p.last_heard_ms.map_or("never".to_owned(), |ms| {
                    format!("{} ago", duration(Duration::from_millis(ms)))
                }),
            ])
            .style(style)
        })
        .collect();
    let title = more(format!(" Peers ({}) ", peers.len()), peers.len());
    Table::new(
        rows,
        [
            Constraint::Length(20),
            Constraint::Length(42),
            Constraint::Length(6),
            Constraint::Length(10),
            Constraint::Fill(1),
        ],
    )
    .header(header_row(&[
        "NAME",
        "ENDPOINT",
        "STATE",
        "RTT",
        "LAST HEARD",
    ]))
    .block(Block::bordered().title(title))
}

fn services_table(s: &Snapshot) -> Table<'static> {
    let rows: Vec<Row> = s
        .services
        .iter()
        .take(MAX_ROWS)
        .map(|svc: &ServiceFlows| {
            let instances: Vec<String> = svc
                .instances
                .iter()
                .map(|p| format!("{}@{}", p.number, p.node))
                .collect();
            Row::new(vec![
                svc.name.clone(),
                svc.service_ip.clone(),
                if instances.is_empty() {
                    "none".to_owned()
                } else {
                    instances.join(" ")
                },
                svc.flows.to_string(),
            ])
        })
        .collect();
    let title = more(
        format!(" Flows per service ({} active) ", s.flows_active),
        s.services.len(),
    );
    Table::new(
        rows,
        [
            Constraint::Length(30),
            Constraint::Length(16),
            Constraint::Fill(1),
            Constraint::Length(8),
        ],
    )
    .header(header_row(&["SERVICE", "SERVICE IP", "INSTANCES", "FLOWS"]))
    .block(Block::bordered().title(title))
}

fn drops_table(s: &Snapshot) -> Table<'static> {
    let rose = Style::new().fg(Color::Red).add_modifier(Modifier::BOLD);
    let rows: Vec<Row> = s
        .drops
        .iter()
        .map(|d: &Rated| {
            Row::new(vec![
                d.name.clone(),
                d.total.to_string(),
                per_second(d.rate),
                if d.rose {
                    "▲".to_owned()
                } else {
                    String::new()
                },
            ])
            .style(if d.rose { rose } else { Style::new() })
        })
        .collect();
    let total: u64 = s.drops.iter().map(|d| d.total).sum();
    let title = format!(
        " Drops ({total} in {}; {} at zero) ",
        reasons(s.drops.len()),
        reasons(s.drops_at_zero)
    );
    Table::new(
        rows,
        [
            Constraint::Length(30),
            Constraint::Length(14),
            Constraint::Length(12),
            Constraint::Fill(1),
        ],
    )
    .header(header_row(&["REASON", "TOTAL", "PER SECOND", "ROSE"]))
    .block(Block::bordered().title(title))
}

/// `1 reason`, `3 reasons`.
fn reasons(n: usize) -> String {
    if n == 1 {
        "1 reason".to_owned()
    } else {
        format!("{n} reasons")
    }
}

/// A table's title, saying how many rows did not fit.
fn more(title: String, len: usize) -> String {
    if len > MAX_ROWS {
        format!("{title}(first {MAX_ROWS}) ")
    } else {
        title
    }
}

/// The status line's text and colours: the refresh count and the keys, or
/// why the data is not fresh.
fn status_line(screen: &Screen, now: Instant) -> (String, Style) {
    let every = duration(screen.interval);
    let age = screen.age(now).map_or("no answer yet".to_owned(), |a| {
        format!("last answer {} ago", duration(a))
    });
    match &screen.problem {
        Some(Failure::Unreachable(e)) => (
            format!("daemon unreachable: {e}, retrying every {every} ({age})"),
            Style::new().fg(Color::White).bg(Color::Red),
        ),
        Some(Failure::Refused(e)) => (
            format!("refresh failed: {e}, retrying every {every} ({age})"),
            Style::new().fg(Color::Black).bg(Color::Yellow),
        ),
        None => (
            format!(
                "refresh {} every {every} · q, Esc or Ctrl-C quits",
                screen.refreshes
            ),
            Style::new().add_modifier(Modifier::REVERSED),
        ),
    }
}

/// `3.0/s` below ten, `42/s` above; `-` without a rate.
fn per_second(rate: Option<f64>) -> String {
    match rate {
        None => "-".to_owned(),
        Some(r) if r < 10.0 => format!("{r:.1}/s"),
        Some(r) => format!("{r:.0}/s"),
    }
}

/// `0.3 s`, `12 s`, `4m 05s`, `2h 07m`.
fn duration(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0..10 => format!("{:.1} s", d.as_secs_f64()),
        10..60 => format!("{secs} s"),
        60..3600 => format!("{}m {:02}s", secs / 60, secs % 60),
        _ => format!("{}h {:02}m", secs / 3600, secs % 3600 / 60),
    }
}

#[cfg(test)]
mod tests;
