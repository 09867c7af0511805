//! SVG plot of provisioned servers over time, one line per run, kills marked.

use std::path::Path;

use plotters::prelude::*;
use serde_json::Value;

/// One line of the plot: its label, the run's timeline (ms since start, sorted) and its
/// kills (ms since start, what was killed).
struct Line {
    label: String,
    timeline: Vec<u64>,
    kills: Vec<(u64, String)>,
}

fn lines(runs: &[Value]) -> Vec<Line> {
    runs.iter()
        .map(|r| {
            let timeline = r["timeline_ms"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_u64).collect())
                .unwrap_or_default();
            let kills = r["kills"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|k| {
                            Some((k["at_ms"].as_u64()?, k["killed"].as_str()?.to_string()))
                        })
                        .collect()
                })
                .unwrap_or_default();
            let mut label = format!(
                "{}: {} member(s), {}",
                r["scenario"].as_str().unwrap_or("?"),
                r["members"],
                r["helper"].as_str().unwrap_or("?")
            );
            if let Some(d) = r["helper_delay_ms"].as_u64().filter(|d| *d > 0) {
                label += &format!(" +{d} ms");
            }
            if let Some(rate) = r["arrival_rate"].as_f64() {
                label += &format!(", arriving {rate:.0}/s");
            }
            Line {
                label,
                timeline,
                kills,
            }
        })
        .collect()
}

/// Draws every run's servers done over seconds since its start into `path` (SVG).
pub fn draw(runs: &[Value], title: &str, path: &Path) -> Result<(), String> {
    let lines = lines(runs);
    let max_ms = lines
        .iter()
        .flat_map(|l| l.timeline.last().copied())
        .max()
        .unwrap_or(1000)
        .max(1000);
    let max_n = lines
        .iter()
        .map(|l| l.timeline.len())
        .max()
        .unwrap_or(1)
        .max(1);
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    let err = |e: DrawingAreaErrorKind<std::io::Error>| e.to_string();
    root.fill(&WHITE).map_err(err)?;
    let x_max = max_ms as f64 / 1000.0 * 1.05;
    let y_max = max_n as f64 * 1.05;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the first provisioning request (or arrival)")
        .y_desc("servers provisioned")
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()
        .map_err(err)?;
    for (i, line) in lines.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let points = std::iter::once((0.0, 0.0)).chain(
            line.timeline
                .iter()
                .enumerate()
                .map(|(n, ms)| (*ms as f64 / 1000.0, (n + 1) as f64)),
        );
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(err)?
            .label(line.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        for (at, who) in &line.kills {
            let x = *at as f64 / 1000.0;
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(x, 0.0), (x, y_max)],
                    RED.stroke_width(1),
                )))
                .map_err(err)?;
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("kill -9 {who}"),
                    (x, y_max * 0.97),
                    ("sans-serif", 13).into_font().color(&RED),
                )))
                .map_err(err)?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}
