//! TPC-C random inputs: uniform draws, NURand (clause 2.1.6), last names (clause 4.3.2.3)
//! and the a-/n-strings of clause 4.3.2.2.
//!
//! NURand(A, x, y) = (((random(0, A) | random(x, y)) + C) % (y - x + 1)) + x, with
//! A = 255 for C_LAST, 1023 for C_ID and 8191 for OL_I_ID. Each field's C is drawn once
//! per run and shared by every terminal ([`NuRandConstants`]); the run's C for C_LAST
//! differs from the loader's by a delta in [65, 119] other than 96 and 112
//! (clause 2.1.6.1), so the run does not hit exactly the names the load favoured.

use rand::Rng;

/// The ten syllables that make up a last name (clause 4.3.2.3).
pub const SYLLABLES: [&str; 10] = [
    "BAR", "OUGHT", "ABLE", "PRI", "PRES", "ESE", "ANTI", "CALLY", "ATION", "EING",
];

pub const A_C_LAST: u32 = 255;
pub const A_C_ID: u32 = 1023;
pub const A_OL_I_ID: u32 = 8191;

/// The C constants of one phase (load or run).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NuRandConstants {
    pub c_last: u32,
    pub c_id: u32,
    pub ol_i_id: u32,
}

impl NuRandConstants {
    /// The loader's constants: each uniform in [0, A].
    pub fn for_load<R: Rng>(rng: &mut R) -> NuRandConstants {
        NuRandConstants {
            c_last: rng.gen_range(0..=A_C_LAST),
            c_id: rng.gen_range(0..=A_C_ID),
            ol_i_id: rng.gen_range(0..=A_OL_I_ID),
        }
    }

    /// The run's constants given the loader's: C_LAST obeys the delta rule; C_ID and
    /// OL_I_ID may (clause 2.1.6.1) and do stay the loader's.
    pub fn for_run<R: Rng>(load: &NuRandConstants, rng: &mut R) -> NuRandConstants {
        let c_last = loop {
            let c = rng.gen_range(0..=A_C_LAST);
            if c_last_delta_ok(load.c_last, c) {
                break c;
            }
        };
        NuRandConstants { c_last, ..*load }
    }
}

/// Clause 2.1.6.1: |C_run - C_load| in [65, 119], and neither 96 nor 112.
pub fn c_last_delta_ok(c_load: u32, c_run: u32) -> bool {
    let delta = c_load.abs_diff(c_run);
    (65..=119).contains(&delta) && delta != 96 && delta != 112
}

/// NURand(A, x, y) of clause 2.1.6.
pub fn nurand<R: Rng>(rng: &mut R, a: u32, c: u32, x: u32, y: u32) -> u32 {
    (((rng.gen_range(0..=a) | rng.gen_range(x..=y)) + c) % (y - x + 1)) + x
}

/// The last name for a number in [0, 999]: its three digits pick the syllables.
pub fn last_name(num: u32) -> String {
    debug_assert!(num < 1000);
    let mut s = String::with_capacity(15);
    s.push_str(SYLLABLES[(num / 100) as usize]);
    s.push_str(SYLLABLES[(num / 10 % 10) as usize]);
    s.push_str(SYLLABLES[(num % 10) as usize]);
    s
}

const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

/// a-string of random length in [min, max].
pub fn astring<R: Rng>(rng: &mut R, min: usize, max: usize) -> String {
    let n = rng.gen_range(min..=max);
    (0..n)
        .map(|_| ALNUM[rng.gen_range(0..ALNUM.len())] as char)
        .collect()
}

/// n-string (digits) of random length in [min, max].
pub fn nstring<R: Rng>(rng: &mut R, min: usize, max: usize) -> String {
    let n = rng.gen_range(min..=max);
    (0..n)
        .map(|_| (b'0' + rng.gen_range(0..10u8)) as char)
        .collect()
}

/// I_DATA / S_DATA: a-string [26, 50]; 10% carry "ORIGINAL" at a random position.
pub fn data_with_original<R: Rng>(rng: &mut R) -> String {
    let mut s = astring(rng, 26, 50);
    if rng.gen_range(0..10) == 0 {
        let at = rng.gen_range(0..=s.len() - 8);
        s.replace_range(at..at + 8, "ORIGINAL");
    }
    s
}

/// Zip code: n-string of 4 followed by "11111" (clause 4.3.2.7).
pub fn zip<R: Rng>(rng: &mut R) -> String {
    let mut s = nstring(rng, 4, 4);
    s.push_str("11111");
    s
}

/// Two random upper-case letters.
pub fn state<R: Rng>(rng: &mut R) -> String {
    (0..2)
        .map(|_| (b'A' + rng.gen_range(0..26u8)) as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn nurand_stays_in_range_and_is_skewed() {
        let mut rng = StdRng::seed_from_u64(7);
        for (a, x, y) in [(255, 0, 999), (1023, 1, 3000), (8191, 1, 100_000)] {
            let c = rng.gen_range(0..=a);
            let mut hits = std::collections::HashMap::new();
            for _ in 0..200_000 {
                let v = nurand(&mut rng, a, c, x, y);
                assert!((x..=y).contains(&v), "NURand({a},{x},{y}) gave {v}");
                *hits.entry(v).or_insert(0u32) += 1;
            }
            // Non-uniform: the most popular value is drawn far more often than average.
            let max = *hits.values().max().unwrap();
            let mean = 200_000.0 / (y - x + 1) as f64;
            assert!(max as f64 > 3.0 * mean, "NURand({a}) looks uniform");
        }
    }

    #[test]
    fn nurand_reaches_both_ends() {
        let mut rng = StdRng::seed_from_u64(1);
        let vals: Vec<u32> = (0..100_000)
            .map(|_| nurand(&mut rng, 255, 0, 0, 999))
            .collect();
        assert!(vals.contains(&0) && vals.contains(&999));
    }

    #[test]
    fn run_c_obeys_delta_rule() {
        let mut rng = StdRng::seed_from_u64(3);
        for c_load in 0..=255 {
            let load = NuRandConstants {
                c_last: c_load,
                c_id: 5,
                ol_i_id: 9,
            };
            for _ in 0..20 {
                let run = NuRandConstants::for_run(&load, &mut rng);
                let d = run.c_last.abs_diff(c_load);
                assert!((65..=119).contains(&d) && d != 96 && d != 112, "delta {d}");
                assert!(run.c_last <= 255);
                assert_eq!((run.c_id, run.ol_i_id), (5, 9));
            }
        }
        assert!(!c_last_delta_ok(100, 196));
        assert!(!c_last_delta_ok(200, 88));
        assert!(!c_last_delta_ok(0, 64));
        assert!(!c_last_delta_ok(0, 120));
        assert!(c_last_delta_ok(0, 65) && c_last_delta_ok(119, 0));
    }

    #[test]
    fn last_names_follow_the_syllables() {
        assert_eq!(last_name(0), "BARBARBAR");
        assert_eq!(last_name(371), "PRICALLYOUGHT");
        assert_eq!(last_name(999), "EINGEINGEING");
        assert_eq!(last_name(40), "BARPRESBAR");
    }

    #[test]
    fn original_appears_in_about_ten_percent() {
        let mut rng = StdRng::seed_from_u64(11);
        let n = 100_000;
        let orig = (0..n)
            .filter(|_| {
                let s = data_with_original(&mut rng);
                assert!((26..=50).contains(&s.len()));
                s.contains("ORIGINAL")
            })
            .count();
        let pct = orig as f64 * 100.0 / n as f64;
        assert!((9.5..10.5).contains(&pct), "{pct}% ORIGINAL");
    }
}
