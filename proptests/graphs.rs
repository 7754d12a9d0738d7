//! Property tests over random architecture graphs (`epcheck::fuzz`): depth 0–3 hidden layers, widths, skip
//! couplings, smooth and clamp activations, dense / conv (stride 1 and 2) / conv+pool couplings, gains that
//! make the dynamics contract. A failing case shrinks (fewer layers, narrower, fewer skips, smaller batch) and
//! the minimal one is written as a regression file (graph TOML + seed) under `fixtures/regressions/`, which
//! `tests/graph.rs` replays. The command line runs the big fuzz (`epcheck fuzz --cases N`).
use epcheck::fuzz::{self, Hidden, Recipe, CLAMP, SMOOTH};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

fn hidden(image: bool) -> BoxedStrategy<Hidden> {
    if image {
        prop_oneof![
            (1i64..=6).prop_map(Hidden::Dense),
            (1i64..=4, 1i64..=2).prop_map(|(channels, stride)| Hidden::Conv { channels, stride }),
            (1i64..=4).prop_map(|channels| Hidden::ConvPool { channels }),
        ]
        .boxed()
    } else {
        (1i64..=6).prop_map(Hidden::Dense).boxed()
    }
}

/// Random recipes: `acts` are the activations to draw from; `image` allows conv inputs.
fn recipes(acts: Vec<&'static str>, image_ok: bool) -> impl Strategy<Value = Recipe> {
    let image = if image_ok { prop::option::of((1i64..=3, 3i64..=8)).boxed() } else { Just(None).boxed() };
    image.prop_flat_map(move |image| {
        (
            Just(image),
            1i64..=6,
            prop::collection::vec(hidden(image.is_some()), 0..=3),
            prop::collection::vec(any::<bool>(), 6),
            prop::sample::select(acts.clone()),
            0.1f64..0.5,
            any::<bool>(),
            prop::sample::select(vec!["sync", "async2"]),
            prop::sample::select(vec!["mse", "ce"]),
            1i64..=3,
            0u64..1000,
            1i64..=4,
        )
            .prop_map(|(image, n_in, hidden, skips, act, gain, biases, schedule, loss, batch, seed, classes)| Recipe {
                image,
                n_in,
                hidden,
                classes: if loss == "ce" { classes.max(2) } else { classes },
                skips,
                activation: act.to_string(),
                gain,
                biases,
                schedule: schedule.to_string(),
                loss: loss.to_string(),
                batch,
                seed,
                planted_output: false,
                fixed: None,
                attention: None,
            })
    })
}

fn config(cases: u32) -> Config {
    let seed = match std::env::var("PROPTEST_SEED").ok().filter(|s| !s.is_empty()).as_deref() {
        Some("random") => RngSeed::Random,
        Some(s) => RngSeed::Fixed(s.parse().expect("PROPTEST_SEED is a u64 or 'random'")),
        None => RngSeed::Fixed(0x9a_0f_f022),
    };
    // Shrunk failures go to fixtures/regressions/ as graph TOML (below), not to proptest's own seed file.
    Config { cases, rng_seed: seed, failure_persistence: None, max_shrink_iters: 256, ..Config::default() }
}

/// Checks a property; on failure writes the case (overwritten while shrinking, so the file ends up holding the
/// minimal failing graph) and fails the proptest.
fn holds(r: &Recipe, property: &str) -> Result<(), TestCaseError> {
    let c = r.case(property);
    let o = fuzz::check(&c);
    if o.verdict == "fail" || o.verdict == "error" {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/regressions");
        let _ = fuzz::write_case(&dir.join(format!("{property}-proptest.toml")), &c, "shrunk by proptests/graphs.rs");
        return Err(TestCaseError::fail(format!("{property} {}: {} — error {:.3e} > {:.3e}: {}", o.verdict, c.summary, o.error, o.threshold, o.detail)));
    }
    Ok(())
}

fn all_acts() -> Vec<&'static str> {
    SMOOTH.iter().chain(CLAMP.iter()).copied().collect()
}

proptest! {
    #![proptest_config(config(24))]

    /// Local-update equivalence on any graph (conv, pooled, skips, clamp units).
    #[test]
    fn graph_local_equals_autograd(r in recipes(all_acts(), true)) {
        holds(&r, "local")?;
    }

    /// BPTT = finite differences of the T-step loss (smooth activations: no kinks along the way).
    #[test]
    fn graph_bptt_equals_finite_differences(r in recipes(SMOOTH.to_vec(), true)) {
        holds(&r, "bptt_fd")?;
    }

    /// Symmetric EP → BPTT (implicit) as β → 0 on converged, kink-free instances: error ≤ c·β².
    #[test]
    fn graph_symmetric_ep_is_second_order(r in recipes(all_acts(), true)) {
        holds(&r, "ep_bptt")?;
    }

    /// N = 2 holomorphic EP = symmetric EP (holomorphic activations, dense couplings only).
    #[test]
    fn graph_holomorphic_n2_equals_symmetric(r in recipes(SMOOTH.to_vec(), false)) {
        holds(&r, "holo_n2")?;
    }
}
