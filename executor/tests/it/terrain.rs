use std::sync::OnceLock;

use executor::terrain::{SIZE, TerrainConfig, TerrainRenderer, TerrainWorkload, to_heights};
use executor::workload::{Workload, run_items};

use crate::common;

fn renderer() -> &'static TerrainRenderer {
    static R: OnceLock<TerrainRenderer> = OnceLock::new();
    R.get_or_init(|| {
        TerrainRenderer::load(common::cpu(), &common::models(), TerrainConfig::default())
            .expect("real terrain model loads")
    })
}

#[test]
fn same_seed_same_png_different_seed_different_png() {
    let r = renderer();
    let a = r
        .render(&[(42, Some(60)), (43, Some(60)), (42, Some(90))], &|_| {})
        .unwrap();
    let again = r.render(&[(42, Some(60))], &|_| {}).unwrap();
    assert_eq!(
        a[0].png, again[0].png,
        "same seed and difficulty → identical PNG bytes"
    );
    assert_ne!(a[0].png, a[1].png, "different seed → different terrain");
    assert_ne!(
        a[0].png, a[2].png,
        "different difficulty → different terrain"
    );
    let t = &a[0];
    assert_eq!(t.heights.len(), SIZE * SIZE);
    let max = t.heights.iter().copied().fold(0.0f32, f32::max);
    let min = t.heights.iter().copied().fold(f32::INFINITY, f32::min);
    assert_eq!(min, 0.0, "zero floor");
    assert!(
        max > 0.05 && max <= 22.17,
        "heights in the model's range, got max {max}"
    );
    let img = image::load_from_memory(&t.png).unwrap();
    assert_eq!((img.width(), img.height()), (128, 128));
    assert!(matches!(img.color(), image::ColorType::L16));
}

#[test]
fn difficulty_raises_the_terrain() {
    let r = renderer();
    let seeds = [1u64, 2, 3];
    let mean_max = |d: u64| {
        let reqs: Vec<_> = seeds.iter().map(|&s| (s, Some(d))).collect();
        let ts = r.render(&reqs, &|_| {}).unwrap();
        ts.iter()
            .map(|t| t.heights.iter().copied().fold(0.0f32, f32::max))
            .sum::<f32>()
            / ts.len() as f32
    };
    let (easy, hard) = (mean_max(5), mean_max(100));
    eprintln!("mean max height: difficulty 5 → {easy:.3}, difficulty 100 → {hard:.3}");
    assert!(
        hard > easy,
        "harder terrain is higher/rougher: {easy} vs {hard}"
    );
}

#[test]
fn seed_defaults_to_a_hash_of_custom_id_and_is_reproducible() {
    let fields = serde_json::Map::new();
    let a = TerrainWorkload::parse_with_id(&fields, "r1").unwrap();
    let b = TerrainWorkload::parse_with_id(&fields, "r1").unwrap();
    let c = TerrainWorkload::parse_with_id(&fields, "r2").unwrap();
    assert_eq!(a, b);
    assert_ne!(a.derived_seed, c.derived_seed);
    let mut w = TerrainWorkload {
        renderer: TerrainRenderer::load(common::cpu(), &common::models(), TerrainConfig::default())
            .unwrap(),
    };
    let x = run_items(&mut w, vec![("r1".into(), a.clone())], &|_| {}).unwrap();
    let y = run_items(&mut w, vec![("r1".into(), b)], &|_| {}).unwrap();
    assert_eq!(x.commitment, y.commitment);
    assert_eq!(
        x.manifest.models["model"],
        executor::models::pinned::TERRAIN_128
    );
    let bad: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(r#"{"difficulty": 101}"#).unwrap();
    assert_eq!(w.parse("r", &bad).unwrap_err().field, "difficulty");
}

#[test]
fn model_space_maps_to_the_height_range() {
    let h = to_heights(&[-1.0, 1.0, 0.0, 5.0]);
    assert_eq!(h[0], 0.0);
    assert!((h[1] - 22.168_64).abs() < 1e-3);
    assert_eq!(h[1], h[3], "clipped");
}
