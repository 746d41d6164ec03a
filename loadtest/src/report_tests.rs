//! Tests of `report.rs`.

use super::*;

#[test]
fn ticks_are_round_and_cover_the_max() {
    let (top, ticks) = linear_ticks(973.0);
    assert_eq!(top, 1000.0);
    assert_eq!(ticks.len(), 6);
    assert_eq!(ticks[1].1, "200");
    let (top, ticks) = linear_ticks(0.37);
    assert!((top - 0.4).abs() < 1e-9);
    assert_eq!(ticks[1].1, "0.1");
    assert_eq!(linear_ticks(0.0).0, 1.0);
    assert_eq!(linear_ticks(f64::NAN).0, 1.0);
}

#[test]
fn decades_label_the_log_axis() {
    let labels: Vec<String> = (-2..=4).map(decade_label).collect();
    assert_eq!(labels, ["0.01", "0.1", "1", "10", "100", "1000", "10000"]);
}

#[test]
fn labels_are_escaped() {
    assert_eq!(
        escape(r#"<a href="x">&'"#),
        "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
    );
}

#[test]
fn an_empty_report_is_still_a_page() {
    let page = html("nothing", &[]);
    assert!(page.contains("<svg"));
    assert!(page.ends_with("</html>\n"));
}
