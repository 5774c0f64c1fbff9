//! Fuzzes the ClientHello sniffer with arbitrary first bytes.
//!
//! `cargo +nightly fuzz run hello fuzz/corpus/hello -- -max_total_time=60`
//! (from `dataplane/`). Besides "never panics, never reads out of bounds",
//! it checks what a correct sniffer promises:
//! - a name is only reported for a whole hello that fits in the bytes seen,
//!   and it is a valid host name (letters, digits, '-', '_', dots);
//! - "need more" always asks for more than it was given, within the cap;
//! - the answer does not change when bytes are appended after a whole hello,
//!   and every strict prefix of a routable hello asks for more.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshgate::hello::{parse, Outcome, MAX_HELLO_BYTES};

fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(2 * MAX_HELLO_BYTES)];
    let mut scratch = vec![0u8; MAX_HELLO_BYTES];
    match parse(data, &mut scratch) {
        Outcome::Sni { name, hello_len } => {
            assert!(hello_len <= data.len() && hello_len <= MAX_HELLO_BYTES);
            assert!(!name.is_empty() && name.len() <= 254);
            assert!(name
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'));
            let name = name.to_vec();
            // Appended bytes do not change the answer.
            let mut longer = data[..hello_len].to_vec();
            longer.extend_from_slice(b"\x17\x03\x03\x00\x01\x00");
            let mut scratch2 = vec![0u8; MAX_HELLO_BYTES];
            match parse(&longer, &mut scratch2) {
                Outcome::Sni {
                    name: again,
                    hello_len: len2,
                } => {
                    assert_eq!(again, &name[..]);
                    assert_eq!(len2, hello_len);
                }
                other => panic!("appending bytes changed the answer: {other:?}"),
            }
            // Every strict prefix asks for more.
            for cut in 0..hello_len {
                match parse(&data[..cut], &mut scratch2) {
                    Outcome::NeedMore { at_least } => assert!(at_least > cut),
                    other => panic!("prefix {cut} of a routable hello: {other:?}"),
                }
            }
        }
        Outcome::NeedMore { at_least } => {
            assert!(
                at_least > data.len(),
                "asked for {at_least} with {} bytes",
                data.len()
            );
            assert!(at_least <= MAX_HELLO_BYTES);
        }
        Outcome::NoSni | Outcome::Invalid(_) => {}
    }
});
