//! What a namespace test does when this machine cannot run it: print `skipped: why` and pass,
//! unless `PEERWIRE_REQUIRE_CHAOS` is set (CI sets it, having installed what the tests need),
//! in which case a skip is a failure: a chaos test that cannot run must not look green there.

/// Reports that the calling test cannot run here; panics when skips are not allowed.
pub(crate) fn skip(why: &str) {
    assert!(
        std::env::var_os("PEERWIRE_REQUIRE_CHAOS").is_none(),
        "PEERWIRE_REQUIRE_CHAOS is set but this test cannot run here: {why}"
    );
    eprintln!("skipped: {why}");
}
