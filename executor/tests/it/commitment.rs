use executor::commitment::*;

fn leaves(n: usize) -> Vec<Hash> {
    (0..n)
        .map(|i| leaf_hash(&format!("id{i}"), &sha256(&[i as u8])))
        .collect()
}

#[test]
fn empty_and_single_roots() {
    assert_eq!(merkle_root(&[]), sha256(b""));
    let l = leaves(1);
    assert_eq!(merkle_root(&l), l[0]);
}

#[test]
fn root_of_three_carries_the_odd_node_up() {
    let l = leaves(3);
    assert_eq!(merkle_root(&l), node_hash(&node_hash(&l[0], &l[1]), &l[2]));
}

#[test]
fn leaf_and_node_are_domain_separated() {
    let h = sha256(b"x");
    let mut leaf_input = vec![0u8];
    leaf_input.extend(1u32.to_le_bytes());
    leaf_input.extend(b"a");
    leaf_input.extend(h);
    assert_eq!(leaf_hash("a", &h), sha256(&leaf_input));
    assert_ne!(
        leaf_hash("a", &h),
        leaf_hash("b", &h),
        "custom_id is bound into the leaf"
    );
    let mut node_input = vec![1u8];
    node_input.extend(h);
    node_input.extend(h);
    assert_eq!(node_hash(&h, &h), sha256(&node_input));
}

#[test]
fn proofs_verify_for_every_leaf_and_fail_when_tampered() {
    for n in 1..=9 {
        let l = leaves(n);
        let root = merkle_root(&l);
        for i in 0..n {
            let proof = merkle_proof(&l, i).expect("index in range");
            assert!(verify_proof(&l[i], &proof, &root), "n={n} i={i}");
            let other = sha256(b"tampered");
            assert!(!verify_proof(&other, &proof, &root));
        }
        assert!(merkle_proof(&l, n).is_none());
    }
}

#[test]
fn any_change_or_reorder_changes_the_root() {
    let items: Vec<(String, Hash)> = (0..5).map(|i| (format!("c{i}"), sha256(&[i]))).collect();
    let c = Commitment::build(&items);
    assert_eq!(c.recompute_root().as_deref(), Some(c.merkle_root.as_str()));
    let mut swapped = items.clone();
    swapped.swap(0, 1);
    assert_ne!(Commitment::build(&swapped).merkle_root, c.merkle_root);
    let mut changed = items.clone();
    changed[4].1 = sha256(b"other");
    assert_ne!(Commitment::build(&changed).merkle_root, c.merkle_root);
}

#[test]
fn embedding_bytes_are_little_endian_f32() {
    assert_eq!(
        embedding_bytes(&[1.0, -2.5]),
        [0, 0, 128, 63, 0, 0, 32, 192]
    );
}

proptest::proptest! {
    /// The streamed runs' incremental root ([`MerkleBuilder`], one leaf at a time) equals the
    /// batch root ([`merkle_root`], which `Commitment::build` uses) after every leaf.
    #[test]
    fn incremental_root_equals_the_batch_root(n in 0usize..300, salt in proptest::prelude::any::<u64>()) {
        let leaves: Vec<Hash> = (0..n)
            .map(|i| leaf_hash(&format!("id{i}-{salt}"), &sha256(&(i as u64 ^ salt).to_le_bytes())))
            .collect();
        let mut b = MerkleBuilder::new();
        proptest::prop_assert_eq!(b.root(), merkle_root(&[]));
        for (i, l) in leaves.iter().enumerate() {
            b.push(*l);
            proptest::prop_assert_eq!(b.root(), merkle_root(&leaves[..=i]));
        }
        proptest::prop_assert_eq!(b.len(), n as u64);
    }
}

#[test]
fn incremental_root_equals_commitment_build_at_powers_of_two_and_around() {
    for n in [0usize, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 1023, 1024, 1025] {
        let items: Vec<(String, Hash)> = (0..n).map(|i| (format!("c{i}"), sha256(&[i as u8, (i >> 8) as u8]))).collect();
        let mut b = MerkleBuilder::new();
        for (id, h) in &items {
            b.push(leaf_hash(id, h));
        }
        assert_eq!(hex::encode(b.root()), Commitment::build(&items).merkle_root, "n = {n}");
    }
}
