//! Choices that replay from a seed: which requests the fake upstream fails,
//! which requests the generator streams. The n-th choice depends only on the
//! seed and n, never on timing or on which task asked first, so a run's mix and
//! an upstream's failures are the same every time for the same seed.

/// A number in `[0, 1)` for the `n`-th choice of `seed`.
pub fn unit(seed: u64, n: u64) -> f64 {
    let x = splitmix64(seed ^ splitmix64(n));
    // The top 53 bits fill an f64's mantissa exactly.
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// Whether the `n`-th choice of `seed` falls within `fraction` (0 never, 1 always).
pub fn chance(seed: u64, n: u64, fraction: f64) -> bool {
    unit(seed, n) < fraction
}

/// SplitMix64's finalizer: a cheap bijective mix, good enough to decorrelate
/// neighbouring `n`s (this is load shaping, not cryptography).
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_hold_roughly_and_replay() {
        let hits = (0..10_000).filter(|&n| chance(7, n, 0.25)).count();
        assert!((2_200..2_800).contains(&hits), "{hits}");
        let again = (0..10_000).filter(|&n| chance(7, n, 0.25)).count();
        assert_eq!(hits, again);
        assert!((0..1_000).all(|n| !chance(7, n, 0.0)));
        assert!((0..1_000).all(|n| chance(7, n, 1.0)));
        assert_ne!(
            (0..64).map(|n| chance(1, n, 0.5)).collect::<Vec<_>>(),
            (0..64).map(|n| chance(2, n, 0.5)).collect::<Vec<_>>()
        );
    }
}
