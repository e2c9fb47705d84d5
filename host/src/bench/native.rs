//! The CPU-bound example tasks compiled natively, to compare the sandbox with:
//! the same lines as `tasks/examples/src/lib.rs` (`fib`, `sha256`), including
//! the decoding of the JSON arguments and the encoding of the result that the
//! guest does too.

use std::hint::black_box;

use super::soft_sha256;

/// `fib` of the examples module: naive recursion, on purpose.
pub fn fib(n: u32) -> u64 {
    fn go(n: u32) -> u64 {
        if n < 2 {
            n.into()
        } else {
            go(n - 1) + go(n - 2)
        }
    }
    go(black_box(n))
}

/// `sha256` of the examples module, end to end as the guest does it: decode
/// the JSON args `[text]`, hash the text with the portable SHA-256 code the
/// guest runs, and format the digest as hex (the JSON result).
///
/// # Errors
/// When `args` is not a one-string JSON array.
pub fn sha256_task(args: &[u8]) -> Result<String, serde_json::Error> {
    let (text,): (String,) = serde_json::from_slice(black_box(args))?;
    let digest = sha256_soft(text.as_bytes());
    serde_json::to_string(&hex::encode(digest))
}

/// SHA-256 with the portable compression function of the `sha2` crate.
pub fn sha256_soft(data: &[u8]) -> [u8; 32] {
    let mut state: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let (blocks, rest) = data.as_chunks::<64>();
    soft_sha256::compress(&mut state, blocks);
    // Padding: 0x80, zeros, the bit length; one or two final blocks.
    let mut tail = [0u8; 128];
    tail[..rest.len()].copy_from_slice(rest);
    tail[rest.len()] = 0x80;
    let end = if rest.len() < 56 { 64 } else { 128 };
    tail[end - 8..end].copy_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    let (tail_blocks, _) = tail[..end].as_chunks::<64>();
    soft_sha256::compress(&mut state, tail_blocks);
    let mut out = [0u8; 32];
    for (o, s) in out.chunks_exact_mut(4).zip(state) {
        o.copy_from_slice(&s.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    #[test]
    fn native_tasks_match_the_examples() {
        assert_eq!(fib(10), 55);
        assert_eq!(fib(30), 832_040);
        assert_eq!(
            sha256_task(br#"["abc"]"#).unwrap(),
            "\"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\""
        );
    }

    #[test]
    fn soft_sha256_matches_sha2_at_every_padding_boundary() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 % 251) as u8).collect();
        for len in [0, 1, 55, 56, 63, 64, 65, 119, 120, 128, 300] {
            let expected: [u8; 32] = sha2::Sha256::digest(&data[..len]).into();
            assert_eq!(sha256_soft(&data[..len]), expected, "length {len}");
        }
    }
}
