//! A generator of modules that are costly to compile yet within every
//! static cap, shared by `host/tests/compile.rs` and `tests/e2e_flood.rs`.

/// A module whose one function keeps `width` locals live across `rounds`
/// rounds of adds: costly to compile (register allocation), cheap to check.
/// `seed` makes each module distinct.
pub fn costly(seed: u32, width: u32, rounds: u32) -> Vec<u8> {
    let mut s =
        String::from("(module (memory (export \"memory\") 1)\n(func $f (param i32) (result i32)");
    for _ in 0..width {
        s.push_str(" (local i32)");
    }
    for r in 0..rounds {
        for i in 0..width {
            let j = (i * 7 + r + 1) % width;
            s.push_str(&format!(
                "\n(local.set {} (i32.add (local.get {}) (i32.const {})))",
                i + 1,
                j + 1,
                seed.wrapping_add(r * width + i)
            ));
        }
    }
    let mut sum = String::from("(local.get 0)");
    for i in 0..width {
        sum = format!("(i32.add {sum} (local.get {}))", i + 1);
    }
    s.push_str(&format!(
        "\n{sum})\n(func (export \"task.run\") (drop (call $f (i32.const 1)))))"
    ));
    wat::parse_str(&s).expect("generated WAT is valid")
}
