//! The chart: an SVG a person can look at without reading the table.
//!
//! Top panel: each metric of each mode as a ratio to `vxlan` (grouped bars,
//! a line at 1.0 = as good as VXLAN; for "lower is better" metrics the
//! ratio is flipped so that taller is always better), with issue 16's
//! target for the default mode as a dashed line over its group; ratios
//! above 2 stop there, their value written above. Bottom panel: the
//! absolute throughputs in Gbit/s.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::report::{ModeSummary, METRICS};
use crate::{stats, targets};

/// The metrics of the ratio panel (loss and the drop counts are left out:
/// ratios of small percentages and counts say little).
const RATIO_KEYS: &[&str] = &[
    "tcp1_gbps",
    "tcp4_gbps",
    "udp_gbps",
    "rr_tps",
    "rr_p50_us",
    "rr_p99_us",
    "crr_cps",
    "sys_cpu_s_per_gbit",
];

/// Short group labels for the ratio panel.
fn short(key: &str) -> &'static str {
    match key {
        "tcp1_gbps" => "TCP x1",
        "tcp4_gbps" => "TCP x4",
        "udp_gbps" => "UDP rate",
        "rr_tps" => "req/resp tps",
        "rr_p50_us" => "1/p50 lat",
        "rr_p99_us" => "1/p99 lat",
        "crr_cps" => "conn/s",
        "sys_cpu_s_per_gbit" => "Gbit/CPU-s",
        _ => "?",
    }
}

/// The colour of the target lines.
const TARGET_COLOR: RGBColor = RGBColor(0xd6, 0x27, 0x28);

const COLORS: [RGBColor; 9] = [
    RGBColor(0x4c, 0x72, 0xb0),
    RGBColor(0x55, 0xa8, 0x68),
    RGBColor(0xc4, 0x4e, 0x52),
    RGBColor(0x81, 0x72, 0xb2),
    RGBColor(0xcc, 0xb9, 0x74),
    RGBColor(0x64, 0xb5, 0xcd),
    RGBColor(0x8c, 0x61, 0x3c),
    RGBColor(0xda, 0x8b, 0xc3),
    RGBColor(0x8c, 0x8c, 0x8c),
];

/// "Taller is better" ratio of `mode` to `vxlan` for metric `key`.
fn better_ratio(summary: &[ModeSummary], mode: &ModeSummary, key: &str) -> Option<f64> {
    let m = METRICS.iter().find(|m| m.key == key)?;
    let base = summary.iter().find(|s| s.mode == "vxlan")?.get(key);
    let r = stats::ratio(mode.get(key), base)?;
    if m.higher_is_better {
        Some(r)
    } else if r > 0.0 {
        Some(1.0 / r)
    } else {
        None
    }
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing the chart: {e:?}")
}

/// Draws the chart of `summary` into `path` (SVG), titled `title`.
pub fn draw(summary: &[ModeSummary], path: &Path, title: &str) -> Result<()> {
    let root = SVGBackend::new(path, (1280, 960)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, ("sans-serif", 24)).map_err(err)?;
    let (top, bottom) = root.split_vertically(520);

    let has_vxlan = summary.iter().any(|s| s.mode == "vxlan");
    if has_vxlan {
        let groups: Vec<(&str, Vec<Option<f64>>)> = RATIO_KEYS
            .iter()
            .map(|k| {
                (
                    short(k),
                    summary
                        .iter()
                        .map(|s| better_ratio(summary, s, k))
                        .collect(),
                )
            })
            .collect();
        let lines: Vec<Option<f64>> = RATIO_KEYS.iter().map(|k| targets::chart_line(k)).collect();
        let panel = Panel {
            caption: "ratio to vxlan (taller is better; 1.0 = vxlan; dashed: issue 16 target of proxytun)",
            y_desc: "x vxlan",
            reference: Some(1.0),
            target_lines: &lines,
            cap: Some(RATIO_CAP),
        };
        bars(&top, summary, &groups, &panel)?;
    } else {
        top.draw(&Text::new(
            "no vxlan run: no ratio panel",
            (40, 40),
            ("sans-serif", 18),
        ))
        .map_err(err)?;
    }

    let groups: Vec<(&str, Vec<Option<f64>>)> = [
        ("TCP 1 stream", "tcp1_gbps"),
        ("TCP 4 streams", "tcp4_gbps"),
        ("UDP 1400 B received", "udp_gbps"),
    ]
    .iter()
    .map(|(l, k)| (*l, summary.iter().map(|s| s.get(k)).collect()))
    .collect();
    let panel = Panel {
        caption: "throughput (median)",
        y_desc: "Gbit/s",
        reference: None,
        target_lines: &[],
        cap: None,
    };
    bars(&bottom, summary, &groups, &panel)?;
    root.present().map_err(err)?;
    Ok(())
}

/// How one bar panel is drawn besides its bars.
#[derive(Debug)]
struct Panel<'a> {
    caption: &'a str,
    y_desc: &'a str,
    /// A line across the whole panel (1.0 = as good as vxlan).
    reference: Option<f64>,
    /// Per group, an optional target line.
    target_lines: &'a [Option<f64>],
    /// The top of the axis: taller bars stop there with their value
    /// written above, so one outlier does not flatten the rest.
    cap: Option<f64>,
}

/// The ratio panel's cap: every target is at most 1.0x, and a ratio of 10
/// (a noisy vxlan round) would squash every other bar to the floor.
const RATIO_CAP: f64 = 2.0;

/// One grouped bar panel: a group per entry of `groups`, a bar per mode,
/// and what `panel` adds.
fn bars(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    summary: &[ModeSummary],
    groups: &[(&str, Vec<Option<f64>>)],
    panel: &Panel<'_>,
) -> Result<()> {
    let Panel {
        caption,
        y_desc,
        reference,
        target_lines,
        cap,
    } = *panel;
    let n = groups.len();
    // Room above the tallest bar for the legend in the upper right, one
    // line per mode (and the target), so it covers no bar.
    let entries = summary.len() + usize::from(target_lines.iter().any(Option::is_some));
    let headroom = 1.15 + 0.07 * entries as f64;
    let ymax = groups
        .iter()
        .flat_map(|(_, v)| v.iter().flatten().copied())
        .chain(reference)
        .chain(target_lines.iter().flatten().copied())
        .fold(0.0f64, f64::max)
        .min(cap.unwrap_or(f64::INFINITY))
        .max(1e-9)
        * headroom;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 20))
        .margin(14)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..n as f64, 0f64..ymax)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc(y_desc)
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(err)?;
    let k = summary.len().max(1) as f64;
    let slot = 0.8 / k;
    for (mi, s) in summary.iter().enumerate() {
        let color = COLORS[mi % COLORS.len()];
        let top = |v: f64| cap.map_or(v, |c| v.min(c));
        let rects = groups.iter().enumerate().filter_map(|(gi, (_, vals))| {
            let v = vals.get(mi).copied().flatten()?;
            let x0 = gi as f64 + 0.1 + slot * mi as f64;
            Some(Rectangle::new(
                [(x0, 0.0), (x0 + slot * 0.9, top(v))],
                color.filled(),
            ))
        });
        chart
            .draw_series(rects)
            .map_err(err)?
            .label(s.mode.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled()));
        let over = TextStyle::from(("sans-serif", 12).into_font())
            .pos(Pos::new(HPos::Center, VPos::Bottom));
        let clipped = groups.iter().enumerate().filter_map(|(gi, (_, vals))| {
            let v = vals.get(mi).copied().flatten()?;
            let c = cap.filter(|c| v > *c)?;
            let x = gi as f64 + 0.1 + slot * (mi as f64 + 0.45);
            Some(Text::new(format!("{v:.1}x"), (x, c), over.clone()))
        });
        chart.draw_series(clipped).map_err(err)?;
    }
    // Group labels under the axis, in the area's own coordinates (the
    // plotting area would clip them).
    let (bx, by) = area.get_base_pixel();
    let style =
        TextStyle::from(("sans-serif", 16).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
    for (gi, (label, _)) in groups.iter().enumerate() {
        let (px, py) = chart.backend_coord(&(gi as f64 + 0.5, 0.0));
        area.draw(&Text::new(
            label.to_string(),
            (px - bx, py - by + 8),
            style.clone(),
        ))
        .map_err(err)?;
    }
    if let Some(r) = reference {
        chart
            .draw_series(LineSeries::new(
                [(0.0, r), (n as f64, r)],
                BLACK.stroke_width(1),
            ))
            .map_err(err)?;
    }
    target_marks(&mut chart, target_lines)?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()
        .map_err(err)?;
    Ok(())
}

/// The dashed target line over each group that has one, its value at the
/// right end, and one legend entry "target".
fn target_marks(
    chart: &mut ChartContext<
        '_,
        SVGBackend<'_>,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    target_lines: &[Option<f64>],
) -> Result<()> {
    let style = TARGET_COLOR.stroke_width(2);
    let mut first = true;
    for (gi, t) in target_lines.iter().enumerate() {
        let Some(t) = *t else { continue };
        let (x0, x1) = (gi as f64 + 0.04, gi as f64 + 0.96);
        let series = chart
            .draw_series(DashedLineSeries::new([(x0, t), (x1, t)], 6, 4, style))
            .map_err(err)?;
        if first {
            series
                .label("target")
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 14, y)], style));
            first = false;
        }
        let label = TextStyle::from(("sans-serif", 12).into_font())
            .color(&TARGET_COLOR)
            .pos(Pos::new(HPos::Right, VPos::Bottom));
        chart
            .draw_series(std::iter::once(Text::new(
                format!("target {t:.2}"),
                (x1, t),
                label,
            )))
            .map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (common brief).
mod tests {
    use super::*;

    #[test]
    fn draws_an_svg_with_every_mode() {
        let mk = |mode: &str, tcp: f64, lat: f64| ModeSummary {
            mode: mode.into(),
            runs: 3,
            medians: METRICS
                .iter()
                .map(|m| match m.key {
                    "tcp1_gbps" | "tcp4_gbps" | "udp_gbps" => Some(tcp),
                    "rr_p50_us" | "rr_p99_us" => Some(lat),
                    _ => Some(1.0),
                })
                .collect(),
        };
        let mut s = vec![
            mk("direct", 30.0, 20.0),
            mk("vxlan", 10.0, 25.0),
            mk("proxytun", 6.0, 50.0),
        ];
        // Lower latency is better, so the flipped ratio of proxytun is 0.5.
        assert_eq!(better_ratio(&s, &s[2], "rr_p50_us"), Some(0.5));
        assert_eq!(better_ratio(&s, &s[2], "tcp1_gbps"), Some(0.6));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.svg");
        draw(&s, &p, "test").unwrap();
        let svg = std::fs::read_to_string(&p).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
        for m in [
            "direct",
            "vxlan",
            "proxytun",
            "TCP x1",
            "Gbit/s",
            "target 0.60",
        ] {
            assert!(svg.contains(m), "no {m} in the SVG");
        }
        // An outlier past the cap is written, not drawn to scale.
        s[2].medians[0] = Some(100.0);
        let p = dir.path().join("cap.svg");
        draw(&s, &p, "cap").unwrap();
        let capped = std::fs::read_to_string(&p).unwrap();
        assert!(capped.contains("10.0x"), "no clipped value in the SVG");
    }
}
