use super::*;
use curve25519_dalek::montgomery::MontgomeryPoint;
use rand_core::{OsRng, RngCore};

fn hex(text: &str) -> [u8; 32] {
    assert_eq!(text.len(), 64, "{text}");
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).expect("hex");
    }
    out
}

#[test]
fn the_function_gives_rfc_7748s_test_vectors() {
    // RFC 7748, section 5.2.
    let vectors = [
        (
            "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
            "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
            "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
        ),
        (
            "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
            "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
            "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
        ),
    ];
    for (k, u, out) in vectors {
        assert_eq!(x25519(hex(k), hex(u)), hex(out));
    }
}

#[test]
fn two_parties_agree_as_in_rfc_7748s_example() {
    // RFC 7748, section 6.1.
    let alice = StaticSecret::from(hex(
        "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
    ));
    let bob = StaticSecret::from(hex(
        "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
    ));
    let alice_public = PublicKey::from(&alice);
    let bob_public = PublicKey::from(&bob);
    assert_eq!(
        alice_public.to_bytes(),
        hex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    );
    assert_eq!(
        bob_public.to_bytes(),
        hex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    );
    let shared = hex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
    assert_eq!(alice.diffie_hellman(&bob_public).to_bytes(), shared);
    assert_eq!(bob.diffie_hellman(&alice_public).to_bytes(), shared);
    assert!(alice.diffie_hellman(&bob_public).was_contributory());
}

#[test]
fn every_kind_of_secret_matches_curve25519_dalek_on_random_and_odd_points() {
    let mut rng = OsRng;
    for round in 0..2_000 {
        let mut k = [0u8; 32];
        let mut u = [0u8; 32];
        rng.fill_bytes(&mut k);
        rng.fill_bytes(&mut u);
        if round % 4 == 1 {
            // A u-coordinate of p or more (not reduced), which both sides must reduce.
            u[1..31].fill(0xff);
            u[0] |= 0xed;
            u[31] = 0x7f;
        }
        // The top bit of u is ignored by both (RFC 7748, section 5): half the rounds set it.
        let expected = MontgomeryPoint(u).mul_clamped(k).to_bytes();
        assert_eq!(x25519(k, u), expected, "k {k:?} u {u:?}");
        let public = PublicKey::from(u);
        assert_eq!(
            StaticSecret::from(k).diffie_hellman(&public).to_bytes(),
            expected
        );
        assert_eq!(
            PublicKey::from(&StaticSecret::from(k)).to_bytes(),
            MontgomeryPoint::mul_base_clamped(k).to_bytes()
        );
    }
}

#[test]
fn a_low_order_point_gives_all_zeros_and_is_not_contributory() {
    // The points of order 1, 2, 4 and 8 on the curve and its twist (u = 0, 1, and the
    // others listed with x25519's small-subgroup checks), and p + 1, which reduces to 1.
    let low_order = [
        [0u8; 32],
        X25519_BASEPOINT_BYTES.map(|b| if b == 9 { 1 } else { b }),
        hex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
        hex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
        hex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
        hex("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    ];
    let secret = StaticSecret::random_from_rng(OsRng);
    for point in low_order {
        let shared = secret.diffie_hellman(&PublicKey::from(point));
        assert_eq!(shared.to_bytes(), [0u8; 32], "{point:?}");
        assert!(!shared.was_contributory());
    }
}

#[test]
fn ephemeral_and_reusable_secrets_agree_with_a_static_one() {
    let ephemeral = EphemeralSecret::random_from_rng(OsRng);
    let reusable = ReusableSecret::random_from_rng(OsRng);
    let fixed = StaticSecret::random_from_rng(OsRng);
    let (e, r, s) = (
        PublicKey::from(&ephemeral),
        PublicKey::from(&reusable),
        PublicKey::from(&fixed),
    );
    let with_static = fixed.diffie_hellman(&e).to_bytes();
    assert_eq!(ephemeral.diffie_hellman(&s).to_bytes(), with_static);
    assert_eq!(
        reusable.diffie_hellman(&s).to_bytes(),
        fixed.diffie_hellman(&r).to_bytes()
    );
    assert_eq!(
        reusable.clone().diffie_hellman(&s).to_bytes(),
        fixed.diffie_hellman(&r).to_bytes()
    );
}

#[test]
fn a_static_secret_keeps_the_bytes_it_was_given() {
    let bytes = [0xffu8; 32];
    let secret = StaticSecret::from(bytes);
    assert_eq!(secret.to_bytes(), bytes);
    assert_eq!(secret.as_bytes(), &bytes);
}
