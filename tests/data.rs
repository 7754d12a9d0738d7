//! Dataset loaders (`src/data`): round trips against the fixtures' generating formulas (restated here from
//! `fixtures/data/make_fixtures.py`, not read back from the loader), hand-computed normalised values,
//! augmentation oracles, tokenisation worked by hand, and every error case.
use epcheck::data::augment::{self, Augment, Flavour, Image, Op, PadMode, Step};
use epcheck::data::images::{self, ImageOptions, Normalization};
use epcheck::data::text::{self, TextOptions, PAD};
use epcheck::data::tokenize;
use epcheck::data::word2vec::{self, Format};
use epcheck::data::{cifar, epoch_seed, idx, Rng, Split};
use epcheck::Error;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

fn fx(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/data").join(p)
}

fn vecf(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(&t.to_kind(Kind::Double).reshape([-1])).unwrap()
}
fn veci(t: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(&t.to_kind(Kind::Int64).reshape([-1])).unwrap()
}

// The generator's formulas (make_fixtures.py).
fn cifar_px(seed: usize, j: usize) -> u8 {
    ((seed * 37 + j * 11 + (j >> 10) * 50) & 255) as u8
}
fn fashion_px(seed: usize, j: usize) -> u8 {
    ((seed * 13 + j * 7) & 255) as u8
}

fn err_msg<T: std::fmt::Debug>(r: epcheck::Result<T>) -> (Error, String) {
    let e = r.expect_err("expected an error");
    let m = e.to_string();
    (e, m)
}

// ------------------------------------------------------------------------------------------- images

#[test]
fn cifar10_round_trip_exact_normalised_values() {
    let ds = images::load("cifar10", &fx("cifar10"), Split::Train).unwrap();
    assert_eq!((ds.len(), ds.shape, ds.classes), (20, [3, 32, 32], 10));
    for r in 0..20 {
        assert_eq!(ds.labels[r], ((r * 3) % 10) as i64);
        assert!(ds.image_bytes(r).iter().enumerate().all(|(j, &v)| v == cifar_px(r, j)), "record {r}");
    }
    let (mean, std) = ([0.4914, 0.4822, 0.4465], [3.0 * 0.2023, 3.0 * 0.1994, 3.0 * 0.2010]);
    let (x, y) = ds.batches(20, None, None).next().unwrap();
    assert_eq!(x.size(), [20, 3, 32, 32]);
    assert_eq!(x.kind(), Kind::Double);
    assert_eq!(veci(&y), (0..20).map(|r| ((r * 3) % 10) as i64).collect::<Vec<_>>());
    let xv = vecf(&x);
    for r in 0..20 {
        for j in 0..3072 {
            let want = (cifar_px(r, j) as f64 / 255.0 - mean[j / 1024]) / std[j / 1024];
            assert!((xv[r * 3072 + j] - want).abs() < 1e-15);
        }
    }
    // Hand-computed: record 0, R plane pixel 0 is byte 0 → −0.4914/0.6069; G plane pixel 0 is byte 50.
    assert!((xv[0] - (-0.8096885813148789)).abs() < 1e-15);
    assert!((xv[1024] - (50.0 / 255.0 - 0.4822) / 0.5982).abs() < 1e-15);
    // The spec's normalised range ≈ [−0.81, 0.92] (v = 0 on channel R, v = 255 on channel B).
    assert!(((255.0 / 255.0 - 0.4465) / (3.0 * 0.2010) - 0.917910447761194f64).abs() < 1e-15);
}

#[test]
fn cifar10_test_split_in_order_with_partial_batch() {
    let ds = images::load("cifar10", &fx("cifar10"), Split::Test).unwrap();
    assert_eq!(ds.len(), 6);
    let b: Vec<(Tensor, Tensor)> = ds.batches(4, None, None).collect();
    assert_eq!(b.iter().map(|(x, _)| x.size()[0]).collect::<Vec<_>>(), [4, 2]);
    let ys: Vec<i64> = b.iter().flat_map(|(_, y)| veci(y)).collect();
    assert_eq!(ys, (100..106).map(|s| ((s * 3) % 10) as i64).collect::<Vec<_>>());
    assert_eq!(vecf(&b[1].0)[0], (cifar_px(104, 0) as f64 / 255.0 - 0.4914) / (3.0 * 0.2023));
}

#[test]
fn cifar100_fine_and_coarse_labels_and_std_without_factor_3() {
    let fine = images::load("cifar100", &fx("cifar100"), Split::Train).unwrap();
    assert_eq!((fine.len(), fine.classes), (10, 100));
    assert_eq!(fine.labels, (200..210).map(|s| ((s * 7 + 1) % 100) as i64).collect::<Vec<_>>());
    let coarse = images::load("cifar100-coarse", &fx("cifar100"), Split::Train).unwrap();
    assert_eq!(coarse.classes, 20);
    assert_eq!(coarse.labels, (200..210).map(|s| (s % 20) as i64).collect::<Vec<_>>());
    let opt = images::load_with("cifar100", &fx("cifar100"), Split::Test, &ImageOptions { coarse: true, ..Default::default() }).unwrap();
    assert_eq!(opt.labels, (300..304).map(|s| (s % 20) as i64).collect::<Vec<_>>());
    assert!(opt.image_bytes(3).iter().enumerate().all(|(j, &v)| v == cifar_px(303, j)));
    let (x, _) = fine.batches(3, None, None).next().unwrap();
    let want = (cifar_px(200, 2048) as f64 / 255.0 - 0.4408) / 0.2761;
    assert!((vecf(&x)[2048] - want).abs() < 1e-15);
}

#[test]
fn fashion_mnist_gzip_idx_zero_padded_to_32() {
    let ds = images::load("fashion-mnist", &fx("fashion-mnist"), Split::Train).unwrap();
    assert_eq!((ds.len(), ds.shape), (12, [1, 32, 32]));
    assert_eq!(ds.labels, (0..12).map(|s| (s % 10) as i64).collect::<Vec<_>>());
    for s in 0..12 {
        let img = ds.image(s);
        for y in 0..32 {
            for x in 0..32 {
                let want = if (2..30).contains(&y) && (2..30).contains(&x) { fashion_px(s, (y - 2) * 28 + (x - 2)) } else { 0 };
                assert_eq!(img.at(0, y, x), want);
            }
        }
    }
    let (x, _) = ds.batches(5, None, None).kind(Kind::Float).next().unwrap();
    assert_eq!((x.size(), x.kind()), (vec![5, 1, 32, 32], Kind::Float));
    let xv = vecf(&x);
    assert!((xv[0] - (-0.2860 / 0.3530)).abs() < 1e-6); // padded border: −0.81020
    assert!((xv[2 * 32 + 2] - (fashion_px(0, 0) as f64 / 255.0 - 0.2860) / 0.3530).abs() < 1e-6);
    // Unpadded, un-normalised: x = v/255 exactly.
    let raw = images::load_with(
        "fashion-mnist",
        &fx("fashion-mnist"),
        Split::Test,
        &ImageOptions { pad: Some(0), normalization: Some(Normalization::None), coarse: false },
    )
    .unwrap();
    assert_eq!((raw.len(), raw.shape), (4, [1, 28, 28]));
    assert_eq!(raw.labels, (50..54).map(|s| ((s + 3) % 10) as i64).collect::<Vec<_>>());
    let (x, _) = raw.batches(4, None, None).next().unwrap();
    let xv = vecf(&x);
    for s in 0..4 {
        for j in 0..784 {
            assert_eq!(xv[s * 784 + j], fashion_px(50 + s, j) as f64 / 255.0);
        }
    }
}

#[test]
fn normalization_from_data_is_population_mean_and_std() {
    let mut ds = images::load("cifar10", &fx("cifar10"), Split::Test).unwrap();
    ds.set_normalization(Normalization::FromData).unwrap();
    for ch in 0..3 {
        let v: Vec<f64> = (0..6).flat_map(|r| (0..1024).map(move |p| cifar_px(100 + r, ch * 1024 + p) as f64 / 255.0)).collect();
        let m = v.iter().sum::<f64>() / v.len() as f64;
        let s = (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / v.len() as f64).sqrt();
        assert!((ds.mean[ch] - m).abs() < 1e-12 && (ds.std[ch] - s).abs() < 1e-12);
    }
    let (x, _) = ds.batches(6, None, None).next().unwrap();
    let x = x.transpose(0, 1).reshape([3, -1]);
    let mean = vecf(&x.mean_dim(1, false, Kind::Double));
    let std = vecf(&x.std_correction(1, 0, false));
    assert!(mean.iter().all(|m| m.abs() < 1e-12) && std.iter().all(|s| (s - 1.0).abs() < 1e-12), "{mean:?} {std:?}");
}

#[test]
fn digits_real_dataset_loads_and_a_nearest_centroid_classifier_works() {
    let tr = images::load("digits", &fx("digits"), Split::Train).unwrap();
    let te = images::load("digits", &fx("digits"), Split::Test).unwrap();
    assert_eq!((tr.len(), te.len(), tr.shape, tr.classes), (1437, 360, [1, 8, 8], 10));
    tr.check_fits(1, 8).unwrap();
    // Pixels are round(v·255/16), v ∈ 0..16.
    let allowed: Vec<u8> = (0..=16).map(|v| (v as f64 * 255.0 / 16.0).round_ties_even() as u8).collect();
    assert!(tr.images.iter().chain(&te.images).all(|b| allowed.contains(b)));
    // The preset's constants are the training split's own statistics.
    let (m, s) = tr.channel_stats();
    assert!((m[0] - tr.mean[0]).abs() < 1e-9 && (s[0] - tr.std[0]).abs() < 1e-9, "{m:?} {s:?} vs {:?} {:?}", tr.mean, tr.std);
    // Labels are aligned with images: a nearest-class-mean classifier (an independent model) reaches > 85 %
    // test accuracy on these digits (it is ~90 % on sklearn's digits).
    let mut cent = vec![[0f64; 64]; 10];
    let mut cnt = [0usize; 10];
    for i in 0..tr.len() {
        let l = tr.labels[i] as usize;
        cnt[l] += 1;
        for (c, &b) in cent[l].iter_mut().zip(tr.image_bytes(i)) {
            *c += b as f64;
        }
    }
    for (c, n) in cent.iter_mut().zip(cnt) {
        c.iter_mut().for_each(|v| *v /= n as f64);
    }
    // Independent numbers, computed in Python straight from sklearn's digits.csv.gz with the same split:
    // nearest centroid 306/360 = 0.850, 1-nearest-neighbour 344/360 = 0.956.
    let centroid = (0..te.len())
        .filter(|&i| {
            let d = |c: &[f64; 64]| c.iter().zip(te.image_bytes(i)).map(|(a, &b)| (a - b as f64).powi(2)).sum::<f64>();
            let best = (0..10).min_by(|&a, &b| d(&cent[a]).partial_cmp(&d(&cent[b])).unwrap()).unwrap();
            best as i64 == te.labels[i]
        })
        .count();
    let nn = (0..te.len())
        .filter(|&i| {
            let d = |j: usize| tr.image_bytes(j).iter().zip(te.image_bytes(i)).map(|(&a, &b)| (a as i64 - b as i64).pow(2)).sum::<i64>();
            let best = (0..tr.len()).min_by_key(|&j| d(j)).unwrap();
            tr.labels[best] == te.labels[i]
        })
        .count();
    println!("digits test accuracy: nearest centroid {centroid}/360, 1-NN {nn}/360");
    assert_eq!((centroid, nn), (306, 344));
}

#[test]
fn shuffle_is_a_seeded_permutation_and_last_partial_batch_is_kept() {
    let ds = images::load("cifar10", &fx("cifar10"), Split::Train).unwrap();
    let it = ds.batches(8, Some(7), None);
    let order = it.order().to_vec();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(sorted, (0..20).collect::<Vec<_>>());
    assert_ne!(order, (0..20).collect::<Vec<_>>());
    let b: Vec<(Tensor, Tensor)> = it.collect();
    assert_eq!(b.iter().map(|(x, _)| x.size()[0]).collect::<Vec<_>>(), [8, 8, 4]);
    // Batches carry the examples of the order, images and labels together.
    let ys: Vec<i64> = b.iter().flat_map(|(_, y)| veci(y)).collect();
    assert_eq!(ys, order.iter().map(|&i| ds.labels[i]).collect::<Vec<_>>());
    let x2 = vecf(&b[2].0);
    let want = (cifar_px(order[17], 5) as f64 / 255.0 - 0.4914) / (3.0 * 0.2023);
    assert_eq!(x2[3072 + 5], want);
    // Same seed → same order; other seeds (or epochs) → other orders.
    assert_eq!(ds.batches(8, Some(7), None).order(), &order[..]);
    assert_ne!(ds.batches(8, Some(8), None).order(), &order[..]);
    let (e0, e1) = (epoch_seed(7, 0), epoch_seed(7, 1));
    assert_ne!(e0, e1);
    assert_ne!(ds.batches(8, Some(e0), None).order(), ds.batches(8, Some(e1), None).order());
    // Test order: file order.
    assert_eq!(ds.batches(8, None, None).order(), &(0..20).collect::<Vec<_>>()[..]);
    // Rng: below is in range and roughly uniform; a permutation of 1000 is one.
    let mut r = Rng::new(1);
    let mut hist = [0usize; 5];
    for _ in 0..50_000 {
        hist[r.below(5)] += 1;
    }
    assert!(hist.iter().all(|&h| (9_500..10_500).contains(&h)), "{hist:?}");
}

fn test_image(c: usize, h: usize, w: usize, seed: usize) -> Image {
    Image::new(c, h, w, (0..c * h * w).map(|j| ((j * 29 + seed * 7 + j / 5) % 256) as u8).collect())
}

#[test]
fn flip_and_crop_oracles() {
    let img = test_image(3, 5, 7, 1);
    let f = augment::hflip(&img);
    assert_eq!(f.at(1, 2, 0), img.at(1, 2, 6));
    assert_eq!(f.at(2, 4, 6), img.at(2, 4, 0));
    assert_eq!(augment::hflip(&f), img, "flip twice = identity");
    // Crop with pad 0 at offset 0 of the full size = identity; a step with pad 0 always is.
    assert_eq!(augment::crop(&img, 0, 0, 5, 7), img);
    let mut rng = Rng::new(3);
    let same = Augment { steps: vec![Step::Crop { size: None, pad: 0, mode: PadMode::Edge }] };
    assert_eq!(same.apply(img.clone(), &mut rng), img);
    // Edge padding replicates the border pixel, zero padding writes 0.
    let e = augment::pad(&img, 2, PadMode::Edge);
    assert_eq!((e.h, e.w), (9, 11));
    for ch in 0..3 {
        for y in 0..9 {
            for x in 0..11 {
                let (sy, sx) = ((y as isize - 2).clamp(0, 4) as usize, (x as isize - 2).clamp(0, 6) as usize);
                assert_eq!(e.at(ch, y, x), img.at(ch, sy, sx));
            }
        }
    }
    let z = augment::pad(&img, 2, PadMode::Zero);
    assert_eq!((z.at(0, 0, 0), z.at(2, 8, 10), z.at(1, 2, 2), z.at(1, 6, 8)), (0, 0, img.at(1, 0, 0), img.at(1, 4, 6)));
    // A crop of the padded image at offset (p, p) is the original.
    assert_eq!(augment::crop(&e, 2, 2, 5, 7), img);
    // Random crop of an edge-padded image: every output is a shifted window of the padded image.
    let aug = Augment { steps: vec![Step::Crop { size: None, pad: 2, mode: PadMode::Edge }] };
    let mut seen = std::collections::HashSet::new();
    for _ in 0..200 {
        let out = aug.apply(img.clone(), &mut rng);
        let hit = (0..=4).flat_map(|t| (0..=4).map(move |l| (t, l))).find(|&(t, l)| augment::crop(&e, t, l, 5, 7) == out);
        seen.insert(hit.expect("a window of the padded image"));
    }
    assert_eq!(seen.len(), 25, "all 25 offsets are drawn");
    // Flip p = ½: about half of the draws flip.
    let flip = Augment { steps: vec![Step::Flip { p: 0.5 }] };
    let n = (0..2000).filter(|_| flip.apply(img.clone(), &mut rng) != img).count();
    assert!((900..1100).contains(&n), "{n}");
}

#[test]
fn randaugment_ops_keep_shape_and_have_their_oracles() {
    let img = test_image(3, 32, 32, 5);
    for op in Op::ALL {
        let m = op.magnitude(9, 31, 32, 32);
        for s in [m, -m] {
            let out = augment::apply_op(&img, op, s);
            assert_eq!((out.c, out.h, out.w, out.data.len()), (3, 32, 32, 3072), "{op:?}");
        }
    }
    assert_eq!(augment::apply_op(&img, Op::Identity, 0.0), img);
    // Spec §7 magnitudes at bin 9 of 31.
    let mags: Vec<f64> = [Op::ShearX, Op::TranslateX, Op::Rotate, Op::Brightness, Op::Posterize, Op::Solarize]
        .iter()
        .map(|o| o.magnitude(9, 31, 32, 32))
        .collect();
    let spec = [0.09, 150.0 / 331.0 * 32.0 * 0.3, 9.0, 0.27, 7.0, 178.5];
    assert!(mags.iter().zip(spec).all(|(a, b)| (a - b).abs() < 1e-6), "{mags:?}");
    // Exactly torchvision 0.26's float32 values (printed from `RandAugment()._augmentation_space(31, (32, 32))`).
    assert_eq!(mags, [0.09000000357627869, 4.3504533767700195, 9.0, 0.26999998092651367, 7.0, 178.5]);
    assert!((mags[1] - 4.35).abs() < 0.01);
    // Zero magnitude: geometry and enhancement ops are the identity.
    for op in [Op::ShearX, Op::ShearY, Op::TranslateX, Op::TranslateY, Op::Rotate, Op::Brightness, Op::Color, Op::Contrast, Op::Sharpness] {
        assert_eq!(augment::apply_op(&img, op, 0.0), img, "{op:?} at 0");
    }
    // Posterize 7 bits clears the lowest bit; Solarize inverts v ≥ 178.5.
    let p = augment::apply_op(&img, Op::Posterize, 7.0);
    assert!(p.data.iter().zip(&img.data).all(|(a, b)| *a == b & 0xFE));
    let s = augment::apply_op(&img, Op::Solarize, 178.5);
    assert!(s.data.iter().zip(&img.data).all(|(a, &b)| *a == if b >= 179 { 255 - b } else { b }));
    // Translate by 4.35 → 4 pixels (int()), fill 0.
    let t = augment::apply_op(&img, Op::TranslateX, 4.35);
    for y in 0..32 {
        for x in 0..32 {
            assert_eq!(t.at(1, y, x), if x >= 4 { img.at(1, y, x - 4) } else { 0 });
        }
    }
    let t = augment::apply_op(&img, Op::TranslateY, -4.35);
    assert_eq!((t.at(0, 0, 3), t.at(0, 27, 3), t.at(0, 28, 3)), (img.at(0, 4, 3), img.at(0, 31, 3), 0));
    // Rotate 90°: a permutation of the pixels of an even-sized square (centre at a pixel corner).
    let r = augment::apply_op(&img, Op::Rotate, 90.0);
    let mut a = r.data.clone();
    let mut b = img.data.clone();
    a.sort();
    b.sort();
    assert_eq!(a, b);
    assert_eq!(augment::apply_op(&r, Op::Rotate, -90.0), img);
    // ShearX m: row y is shifted by round(m·(y + ½)) (top-left pivot): m = 0.09 → rows 0..5 unshifted, row 31 by 3.
    let sh = augment::apply_op(&img, Op::ShearX, 0.09);
    assert_eq!(sh.at(0, 0, 10), img.at(0, 0, 10));
    assert_eq!(sh.at(0, 31, 10), img.at(0, 31, 13));
    assert_eq!(sh.at(0, 31, 29), 0);
    // Brightness factor f: trunc(clamp(f·v)).
    let br = augment::apply_op(&img, Op::Brightness, 0.27);
    assert!(br.data.iter().zip(&img.data).all(|(a, &b)| *a == (1.27f32 * b as f32).clamp(0.0, 255.0) as u8));
    // AutoContrast stretches [lo, hi] to [0, 255]; Equalize of a two-level image maps the levels to 0 and 255·k.
    let lo_hi = Image::new(1, 2, 2, vec![10, 20, 15, 10]);
    assert_eq!(augment::apply_op(&lo_hi, Op::AutoContrast, 0.0).data, vec![0, 255, 127, 0]);
    let two = Image::new(1, 16, 32, (0..512).map(|i| if i < 256 { 50 } else { 200 }).collect());
    // hist: 256 at 50 and 200; step = 256/255 = 1; lut[200] = cumsum up to 199 + 0 = 256 → clamp 255.
    let eq = augment::apply_op(&two, Op::Equalize, 0.0);
    assert!(eq.data[..256].iter().all(|&v| v == 0) && eq.data[256..].iter().all(|&v| v == 255));
    // Color leaves a one-channel image alone. Contrast of a constant RGB image v = 77 is not the identity in
    // torchvision: the grey weights sum to 0.9999, so the truncated grey mean is 76 and 0.73·77 + 0.27·76 → 76.
    let gray = test_image(1, 8, 8, 2);
    assert_eq!(augment::apply_op(&gray, Op::Color, 0.27), gray);
    let flat = Image::new(3, 4, 4, vec![77; 48]);
    assert_eq!(augment::apply_op(&flat, Op::Contrast, -0.27).data, vec![76; 48]);
    // RandAugment through the loader: shapes and dtype kept, seeded and reproducible.
    let ds = images::load("cifar10", &fx("cifar10"), Split::Train).unwrap();
    let aug = Augment::preset("cifar10", Flavour::BrainSeek).unwrap();
    assert_eq!(aug.steps.len(), 3);
    let run = |seed| ds.batches(8, Some(seed), Some(&aug)).kind(Kind::Float).map(|(x, _)| x).collect::<Vec<_>>();
    let (a, b, c) = (run(11), run(11), run(12));
    assert_eq!(a.iter().map(|x| x.size()).collect::<Vec<_>>(), [vec![8, 3, 32, 32], vec![8, 3, 32, 32], vec![4, 3, 32, 32]]);
    assert!(a.iter().all(|x| x.kind() == Kind::Float));
    assert!(a.iter().zip(&b).all(|(p, q)| p.equal(q)));
    assert!(!a[0].equal(&c[0]));
    // Augmentation changes pixels (flip/RandAugment/crop), but values stay in the normalised uint8 grid.
    let plain = ds.batches(8, Some(11), None).next().unwrap().0;
    assert!(!plain.to_kind(Kind::Float).equal(&a[0]));
    let mut rng = Rng::new(9);
    for _ in 0..50 {
        let out = augment::rand_augment(&img, 4, 9, 31, &mut rng);
        assert_eq!((out.c, out.h, out.w), (3, 32, 32));
    }
    assert!(Augment::preset("fashion-mnist", Flavour::Rain).is_err());
    assert_eq!(Augment::preset("digits", Flavour::BrainSeek).unwrap(), Augment::none());
}

/// Every op at bins 9 and 25 and both signs, on an RGB and a grey 10×12 image, against torchvision 0.26's own
/// `_apply_op` outputs (fixtures/data/make_torchvision_oracle.py).
#[test]
fn randaugment_ops_match_torchvision() {
    let b = std::fs::read(fx("randaugment_oracle.bin")).unwrap();
    let (h, w) = (10, 12);
    let inputs = [Image::new(3, h, w, b[..360].to_vec()), Image::new(1, h, w, b[360..480].to_vec())];
    let mut pos = 480;
    let mut checked = 0;
    let mut bad = Vec::new();
    while pos < b.len() {
        let (i, k, bin, sign) = (b[pos] as usize, b[pos + 1] as usize, b[pos + 2] as usize, b[pos + 3]);
        let img = &inputs[i];
        let n = img.data.len();
        let want = &b[pos + 4..pos + 4 + n];
        pos += 4 + n;
        let op = Op::ALL[k];
        let mut m = op.magnitude(bin, 31, h, w);
        if sign == 1 && op.signed() {
            m = -m;
        }
        let got = augment::apply_op(img, op, m);
        let diff = got.data.iter().zip(want).filter(|(a, b)| a != b).count();
        if diff > 0 {
            bad.push(format!("{op:?} c={} bin={bin} sign={sign}: {diff}/{n} pixels differ", img.c));
        }
        checked += 1;
    }
    assert_eq!(checked, 2 * 14 * 2 * 2);
    assert!(bad.is_empty(), "{bad:#?}");
}

#[test]
fn image_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    // Truncated CIFAR file: not a multiple of the record size.
    let (e, m) = err_msg(cifar::read_batch_file(&fx("cifar10-truncated/data_batch_1.bin"), cifar::Variant::Cifar10));
    assert!(matches!(e, Error::File { .. }) && m.contains("not a multiple") && m.contains("3073") && m.contains("data_batch_1.bin"), "{m}");
    // Missing file names the path.
    let (_, m) = err_msg(images::load("cifar10", dir.path(), Split::Train));
    assert!(m.contains("data_batch_1.bin") && m.contains("not found") && m.contains(&dir.path().display().to_string()), "{m}");
    let half = dir.path().join("half");
    std::fs::create_dir(&half).unwrap();
    std::fs::copy(fx("cifar10/data_batch_1.bin"), half.join("data_batch_1.bin")).unwrap();
    let (_, m) = err_msg(images::load("cifar10", &half, Split::Train));
    assert!(m.contains("data_batch_2.bin") && m.contains("not found"), "{m}");
    // Label out of range (CIFAR-10 label 10).
    let mut rec = std::fs::read(fx("cifar10/test_batch.bin")).unwrap();
    rec[3073] = 10;
    let bad = dir.path().join("bad.bin");
    std::fs::write(&bad, &rec).unwrap();
    let (_, m) = err_msg(cifar::read_batch_file(&bad, cifar::Variant::Cifar10));
    assert!(m.contains("record 1") && m.contains("label 10 out of range 0..10"), "{m}");
    // IDX: wrong magic, count mismatch, label out of range, truncated data.
    let idxd = dir.path().join("idx");
    std::fs::create_dir(&idxd).unwrap();
    let img = |n: u32| {
        let mut b = vec![0, 0, 8, 3];
        for v in [n, 2, 2] {
            b.extend(v.to_be_bytes());
        }
        b.extend(vec![7u8; 4 * n as usize]);
        b
    };
    let lab = |l: &[u8]| {
        let mut b = vec![0, 0, 8, 1];
        b.extend((l.len() as u32).to_be_bytes());
        b.extend(l);
        b
    };
    let wr = |name: &str, b: &[u8]| std::fs::write(idxd.join(name), b).unwrap();
    let mut wrong = img(3);
    wrong[3] = 1;
    wr("train-images-idx3-ubyte", &wrong);
    wr("train-labels-idx1-ubyte", &lab(&[1, 2, 3]));
    let (_, m) = err_msg(images::load("mnist", &idxd, Split::Train));
    assert!(m.contains("wrong IDX magic 0x00000801, expected 0x00000803") && m.contains("train-images-idx3-ubyte"), "{m}");
    wr("train-images-idx3-ubyte", &img(4));
    let (_, m) = err_msg(images::load("mnist", &idxd, Split::Train));
    assert!(m.contains("3 labels") && m.contains("4 images") && m.contains("count mismatch"), "{m}");
    wr("train-labels-idx1-ubyte", &lab(&[1, 2, 3, 10]));
    let (_, m) = err_msg(images::load("mnist", &idxd, Split::Train));
    assert!(m.contains("label 10 at index 3 out of range 0..10"), "{m}");
    let mut short = img(4);
    short.truncate(short.len() - 3);
    let (_, m) = err_msg(idx::parse(Path::new("x"), &short, 3));
    assert!(m.contains("truncated"), "{m}");
    // Shape check for presets.
    let (e, m) = err_msg(images::check_fits([1, 8, 8], 3, 32));
    assert!(matches!(e, Error::Shape(_)));
    assert_eq!(m, "shape mismatch: images of shape 1×8×8 do not fit preset expecting 3×32×32");
    images::check_fits([3, 32, 32], 3, 32).unwrap();
    assert_eq!(images::preset_shape("fashion-mnist").unwrap(), [1, 32, 32]);
    assert!(matches!(images::load("svhn", dir.path(), Split::Train), Err(Error::UnknownDataset(..))));
    let mut ds = images::load("digits", &fx("digits"), Split::Test).unwrap();
    let (_, m) = err_msg(ds.set_normalization(Normalization::MeanStd { mean: vec![0.5], std: vec![0.0] }));
    assert!(m.contains("std 0 is not a positive number"), "{m}");
    let (_, m) = err_msg(ds.set_normalization(Normalization::MeanStd { mean: vec![0.5; 3], std: vec![1.0; 3] }));
    assert!(m.contains("3 means and 3 stds for 1 channels"), "{m}");
    assert!(matches!(Split::parse("val"), Err(Error::Config(_))));
}

// --------------------------------------------------------------------------------------------------- text

const WORDS: [&str; 30] = [
    "the", "movie", "was", "great", "bad", "film", "a", "good", "acting", "plot", "boring", "i", "loved", "it", "story",
    "man", "is", "playing", "guitar", "dog", "sleeping", "outside", "cat", "not", "!", "?", ",", ".", "Great", "woman",
];
fn vector(k: usize) -> [f32; 4] {
    let k = k as f64;
    [(k / 4.0) as f32, (-k / 8.0) as f32, ((k as usize % 5) as f64 / 2.0) as f32, (1.0 + k / 16.0) as f32]
}
fn w(word: &str) -> u32 {
    WORDS.iter().position(|x| *x == word).unwrap() as u32
}

#[test]
fn word2vec_binary_and_text_give_identical_vectors() {
    let bin = word2vec::load(&fx("word2vec/vectors.bin"), Format::Auto, Some(4)).unwrap();
    let txt = word2vec::load(&fx("word2vec/vectors.txt"), Format::Auto, None).unwrap();
    let bin_forced = word2vec::load(&fx("word2vec/vectors.bin"), Format::Binary, None).unwrap();
    for e in [&bin, &txt, &bin_forced] {
        assert_eq!((e.len(), e.dim, e.duplicates, e.file_vocab), (30, 4, 0, 30));
        assert_eq!(e.words, WORDS);
        for (k, word) in WORDS.iter().enumerate() {
            assert_eq!(e.row(k), vector(k), "word {word}");
        }
    }
    assert_eq!(bin.vectors.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), txt.vectors.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
    // Case-sensitive lookup.
    assert_eq!(bin.get("Great").unwrap(), vector(28));
    assert_eq!(bin.get("great").unwrap(), vector(3));
    assert!(bin.get("GREAT").is_none());
    // Content sniffing without an extension, filtering, and writers round-trip.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fx("word2vec/vectors.txt"), dir.path().join("v_text")).unwrap();
    std::fs::copy(fx("word2vec/vectors.bin"), dir.path().join("v_bin")).unwrap();
    assert_eq!(word2vec::load(&dir.path().join("v_text"), Format::Auto, None).unwrap().vectors, txt.vectors);
    assert_eq!(word2vec::load(&dir.path().join("v_bin"), Format::Auto, None).unwrap().vectors, txt.vectors);
    for (src, name) in [("word2vec/vectors.bin", "v.bin.gz"), ("word2vec/vectors.txt", "v_noext.gz")] {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, &std::fs::read(fx(src)).unwrap()).unwrap();
        std::fs::write(dir.path().join(name), gz.finish().unwrap()).unwrap();
        assert_eq!(word2vec::load(&dir.path().join(name), Format::Auto, None).unwrap().vectors, txt.vectors, "{name}");
    }
    let f = word2vec::load_filtered(&fx("word2vec/vectors.bin"), Format::Auto, None, |w| w.len() == 1).unwrap();
    assert_eq!(f.words, ["a", "i", "!", "?", ",", "."]);
    word2vec::write_binary(&dir.path().join("o.bin"), &txt).unwrap();
    word2vec::write_text(&dir.path().join("o.txt"), &bin).unwrap();
    assert_eq!(word2vec::load(&dir.path().join("o.bin"), Format::Auto, None).unwrap().vectors, txt.vectors);
    assert_eq!(word2vec::load(&dir.path().join("o.txt"), Format::Auto, None).unwrap().vectors, txt.vectors);
}

#[test]
fn word2vec_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    for (name, head) in [("h1.txt", "30 x\n"), ("h2.txt", "0 4\n"), ("h3.txt", "30\n"), ("h4.txt", "30 4 5\n")] {
        std::fs::write(p(name), format!("{head}the 1 2 3 4\n")).unwrap();
        let (e, m) = err_msg(word2vec::load(&p(name), Format::Auto, None));
        assert!(matches!(e, Error::File { .. }) && m.contains("not two positive integers") && m.contains(name), "{m}");
    }
    std::fs::write(p("vals.txt"), "2 4\nthe 1 2 3 4\nmovie 1 2 3\n").unwrap();
    let (_, m) = err_msg(word2vec::load(&p("vals.txt"), Format::Text, None));
    assert!(m.contains("line 3") && m.contains("'movie' has 3 values, expected d = 4"), "{m}");
    let (_, m) = err_msg(word2vec::load(&fx("word2vec/vectors.bin"), Format::Auto, Some(300)));
    assert!(m.contains("embedding dimension 4 differs from the expected d = 300") && m.contains("vectors.bin"), "{m}");
    let full = std::fs::read(fx("word2vec/vectors.bin")).unwrap();
    std::fs::write(p("cut.bin"), &full[..full.len() - 10]).unwrap();
    let (_, m) = err_msg(word2vec::load(&p("cut.bin"), Format::Auto, None));
    assert!(m.contains("truncated") && m.contains("word 30"), "{m}");
    let text = std::fs::read_to_string(fx("word2vec/vectors.txt")).unwrap();
    let short: String = text.lines().take(21).map(|l| format!("{l}\n")).collect();
    std::fs::write(p("cut.txt"), short).unwrap();
    let (_, m) = err_msg(word2vec::load(&p("cut.txt"), Format::Auto, None));
    assert!(m.contains("truncated: the header announces 30 words, the file has 20"), "{m}");
    let (_, m) = err_msg(word2vec::load(&p("absent.bin"), Format::Auto, None));
    assert!(m.contains("absent.bin") && m.contains("not found"), "{m}");
}

#[test]
fn cleaning_and_tokenisation_by_hand() {
    // Toktok's own examples (NLTK docstring) on text the cleaning would keep.
    assert_eq!(tokenize::toktok("Is 9.5 or 525,600 my favorite number?"), ["Is", "9.5", "or", "525,600", "my", "favorite", "number", "?"]);
    assert_eq!(tokenize::toktok("This, is a sentence"), ["This", ",", "is", "a", "sentence"]);
    // Only a final period is split; runs of periods are tokens; `?` only before whitespace; `!` always.
    assert_eq!(tokenize::toktok("a.b c. d..."), ["a.b", "c.", "d", "..."]);
    assert_eq!(tokenize::toktok("end."), ["end", "."]);
    // "ok?!": `!` is padded first, then the `?` before the new space is padded too.
    assert_eq!(tokenize::toktok("why?not ok?! yes!no"), ["why?not", "ok", "?", "!", "yes", "!", "no"]);
    assert_eq!(tokenize::toktok("x,,y a,b 1,2"), ["x", ",,", "y", "a", ",", "b", "1,2"]);
    // Backticks are padded one by one, so Toktok's " ` ` " → " `` " rule never sees single spaces.
    assert_eq!(tokenize::toktok("[a]b `q` ` `"), ["[", "a", "]", "b", "`", "q", "`", "`", "`"]);
    // IMDB cleaning (§10.1 step 2): HTML, "[…]" spans, characters outside the class (A–z keeps ^ and _).
    assert_eq!(tokenize::clean_imdb("I <b>loved</b> it [sic] :-) &amp; a^b_c; 5*3"), "I loved it    a^b_c 53");
    assert_eq!(tokenize::clean_imdb("movie.<br /><br />The"), "movie.The");
    // SNLI cleaning (§10.2 step 4): . ? ! padded, commas deleted.
    assert_eq!(tokenize::clean_snli("Hi, there.Yes?"), "Hi there . Yes ? ");
    assert_eq!(tokenize::tokenize(&tokenize::clean_snli("A Man, is here!")), ["a", "man", "is", "here", "!"]);
    assert_eq!(
        tokenize::tokenize(&tokenize::clean_imdb("Bad, bad, BAD movie... The plot was boring?! Not good")),
        ["bad", ",", "bad", ",", "bad", "movie", "...", "the", "plot", "was", "boring", "?", "!", "not", "good"]
    );
}

#[test]
fn imdb_oov_truncation_padding_and_labels_by_hand() {
    let opts = TextOptions { seq_len: 12, embed_dim: Some(4), max_rows: None };
    let ds = text::load("imdb", &fx("aclImdb"), Split::Train, &fx("word2vec/vectors.bin"), &opts).unwrap();
    // Order: neg (ids 2, 3) then pos (ids 0, 1).
    assert_eq!(ds.labels, [0, 0, 1, 1]);
    assert_eq!((ds.segments, ds.seq_len, ds.classes, ds.dim()), (1, 12, 2, 4));
    let seqs: [&[&str]; 4] = [
        // "Bad, bad, BAD movie... The plot was boring?! Not good": 15 tokens, "..." unknown, 14 found → cut to 12.
        &["bad", ",", "bad", ",", "bad", "movie", "the", "plot", "was", "boring", "?", "!"],
        // "<i>Boring</i> film; the dog was sleeping & the cat was not.": 11 tokens, all found.
        &["boring", "film", "the", "dog", "was", "sleeping", "the", "cat", "was", "not", "."],
        // "I loved the movie.<br /><br />The acting was great!": "movie.the" unknown.
        &["i", "loved", "the", "acting", "was", "great", "!"],
        // "A good film , a good story [spoiler removed] and a great plot.": "and" unknown.
        &["a", "good", "film", ",", "a", "good", "story", "a", "great", "plot", "."],
    ];
    let b = ds.batch(&[0, 1, 2, 3], Kind::Double, Device::Cpu);
    assert_eq!(b.x.size(), [4, 12, 4]);
    let x = vecf(&b.x);
    let mask = Vec::<bool>::try_from(&b.mask.reshape([-1])).unwrap();
    for (i, seq) in seqs.iter().enumerate() {
        for t in 0..12 {
            let row = &x[(i * 12 + t) * 4..(i * 12 + t + 1) * 4];
            match seq.get(t) {
                Some(word) => {
                    assert!(mask[i * 12 + t]);
                    assert_eq!(row, vector(w(word) as usize).map(|v| v as f64), "example {i} token {t}");
                }
                None => assert!(!mask[i * 12 + t] && row.iter().all(|&v| v == 0.0)),
            }
        }
    }
    let r = &ds.report;
    assert_eq!((r.examples, r.tokens, r.oov_tokens, r.truncated, r.empty), (4, 15 + 11 + 8 + 12, 3, 1, 0));
    // Test split with L = 12: "Zzz qqq xyzzy" has no known word; "Great acting. Great story. I loved it" keeps
    // lowercase "great" (not "Great") and drops "acting." and "story.".
    let te = text::load("imdb", &fx("aclImdb"), Split::Test, &fx("word2vec/vectors.txt"), &opts).unwrap();
    assert_eq!(te.labels, [0, 0, 1, 1]);
    let tok = |i: usize| te.example_tokens(i).iter().filter(|&&k| k != PAD).map(|&k| te.embeddings.words[k as usize].clone()).collect::<Vec<_>>();
    assert_eq!(tok(0), ["it", "was", "bad"]);
    assert!(tok(1).is_empty());
    assert_eq!(tok(2), ["great", "great", "i", "loved", "it"]);
    assert_eq!(tok(3), ["the", "movie", "was", "good"]);
    let r = &te.report;
    assert_eq!((r.tokens, r.oov_tokens, r.truncated, r.empty), (17, 5, 0, 1));
    // Only the words used are kept.
    assert_eq!(te.embeddings.len(), 9);
    // Both splits with one parse of the vectors, and with the vectors already in memory: the same datasets.
    let (tr2, te2) = text::load_splits("imdb", &fx("aclImdb"), &fx("word2vec/vectors.bin"), &opts).unwrap();
    let all = word2vec::load(&fx("word2vec/vectors.bin"), Format::Auto, Some(4)).unwrap();
    let te3 = text::load_with_embeddings("imdb", &fx("aclImdb"), Split::Test, &all, &opts).unwrap();
    for (a, b) in [(&ds, &tr2), (&te, &te2), (&te, &te3)] {
        assert_eq!((&a.labels, &a.report), (&b.labels, &b.report));
        let words = |d: &text::TextDataset| d.tokens.iter().map(|&k| if k == PAD { String::new() } else { d.embeddings.words[k as usize].clone() }).collect::<Vec<_>>();
        assert_eq!(words(a), words(b));
        assert!(a.batch(&[0, 1, 2, 3], Kind::Double, Device::Cpu).x.equal(&b.batch(&[0, 1, 2, 3], Kind::Double, Device::Cpu).x));
    }
}

#[test]
fn snli_labels_skips_and_premise_hypothesis_by_hand() {
    let opts = TextOptions { seq_len: 4, embed_dim: Some(4), max_rows: None };
    let ds = text::load("snli", &fx("snli"), Split::Train, &fx("word2vec/vectors.txt"), &opts).unwrap();
    // neutral = 0, contradiction = 1, entailment = 2; the "-" row and the malformed line are skipped.
    assert_eq!(ds.labels, [0, 1, 2, 2, 0, 1, 2, 0]);
    let r = &ds.report;
    assert_eq!(
        (r.rows_scanned, r.skipped_label, r.skipped_malformed, r.missing_sentences, r.examples),
        (10, 1, 1, 1, 8)
    );
    assert_eq!((r.tokens, r.oov_tokens, r.truncated, r.empty), (72, 0, 10, 1));
    let p = PAD;
    let want: [[u32; 8]; 8] = [
        [w("a"), w("man"), w("is"), w("playing"), w("the"), w("man"), w("is"), w("good")],
        [w("a"), w("dog"), w("is"), w("sleeping"), w("the"), w("dog"), w("is"), w("playing")],
        [w("a"), w("woman"), w("is"), w("playing"), w("a"), w("woman"), w("is"), w("playing")],
        [w("the"), w("cat"), w("the"), w("dog"), p, p, p, p],
        [w("a"), w("man"), w("is"), w("sleeping"), w("the"), w("man"), w("is"), w("not")],
        [w("the"), w("film"), w("was"), w("good"), w("the"), w("film"), w("was"), w("bad")],
        [w("a"), w("dog"), w("."), p, w("a"), w("dog"), w("is"), w("outside")],
        [w("a"), p, p, p, w("the"), p, p, p],
    ];
    let b = ds.batches(8, None).next().unwrap();
    assert_eq!((b.x.size(), b.mask.size()), (vec![8, 8, 4], vec![8, 8]));
    assert_eq!(veci(&b.y), ds.labels);
    let x = vecf(&b.x);
    let mask = Vec::<bool>::try_from(&b.mask.reshape([-1])).unwrap();
    for (i, row) in want.iter().enumerate() {
        for (t, &k) in row.iter().enumerate() {
            let got = &x[(i * 8 + t) * 4..(i * 8 + t + 1) * 4];
            if k == PAD {
                assert!(!mask[i * 8 + t] && got.iter().all(|&v| v == 0.0), "example {i} pos {t}");
            } else {
                assert!(mask[i * 8 + t]);
                assert_eq!(got, vector(k as usize).map(|v| v as f64), "example {i} pos {t}");
            }
        }
    }
    let (prem, hyp) = b.premise_hypothesis();
    assert_eq!((prem.size(), hyp.size()), (vec![8, 4, 4], vec![8, 4, 4]));
    assert!(hyp.equal(&b.x.narrow(1, 4, 4)));
    // Row cap (§10.2 step 2) and the test file.
    let capped = text::load("snli", &fx("snli"), Split::Train, &fx("word2vec/vectors.txt"), &TextOptions { max_rows: Some(3), ..opts.clone() }).unwrap();
    assert_eq!((capped.report.rows_scanned, capped.labels.clone()), (3, vec![0, 1, 2]));
    let te = text::load("snli", &fx("snli"), Split::Test, &fx("word2vec/vectors.bin"), &opts).unwrap();
    assert_eq!((te.labels.clone(), te.report.skipped_label), (vec![2, 1], 1));
}

#[test]
fn text_batches_shuffle_partial_and_errors() {
    let opts = TextOptions { seq_len: 4, embed_dim: None, max_rows: None };
    let ds = text::load("snli", &fx("snli"), Split::Train, &fx("word2vec/vectors.bin"), &opts).unwrap();
    let it = ds.batches(3, Some(5)).kind(Kind::Float);
    let order = it.order().to_vec();
    let mut s = order.clone();
    s.sort();
    assert_eq!(s, (0..8).collect::<Vec<_>>());
    let bs: Vec<_> = it.collect();
    assert_eq!(bs.iter().map(|b| b.x.size()[0]).collect::<Vec<_>>(), [3, 3, 2]);
    assert!(bs.iter().all(|b| b.x.kind() == Kind::Float && b.mask.kind() == Kind::Bool));
    assert_eq!(bs.iter().flat_map(|b| veci(&b.y)).collect::<Vec<_>>(), order.iter().map(|&i| ds.labels[i]).collect::<Vec<_>>());
    assert_eq!(ds.batches(3, Some(5)).order(), &order[..]);
    // Errors: wrong dimension, missing folders and files, bad review names, unknown dataset.
    let (_, m) = err_msg(text::load("imdb", &fx("aclImdb"), Split::Train, &fx("word2vec/vectors.bin"), &TextOptions::imdb()));
    assert!(m.contains("embedding dimension 4 differs from the expected d = 300"), "{m}");
    let dir = tempfile::tempdir().unwrap();
    let (_, m) = err_msg(text::load("snli", dir.path(), Split::Train, &fx("word2vec/vectors.bin"), &opts));
    assert!(m.contains("snli_1.0_train.jsonl") && m.contains("not found"), "{m}");
    let (_, m) = err_msg(text::load("imdb", dir.path(), Split::Train, &fx("word2vec/vectors.bin"), &opts));
    assert!(m.contains("aclImdb") && m.contains("neg"), "{m}");
    for pol in ["pos", "neg"] {
        std::fs::create_dir_all(dir.path().join("train").join(pol)).unwrap();
    }
    std::fs::write(dir.path().join("train/pos/review.txt"), "good").unwrap();
    let (_, m) = err_msg(text::load("imdb", dir.path(), Split::Train, &fx("word2vec/vectors.bin"), &opts));
    assert!(m.contains("review.txt") && m.contains("<id>_<rating>.txt"), "{m}");
    assert!(matches!(
        text::load("yelp", dir.path(), Split::Train, &fx("word2vec/vectors.bin"), &opts),
        Err(Error::UnknownDataset(..))
    ));
}

