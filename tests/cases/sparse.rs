//! Files with holes: a thin VM image restored whole needs its size on the disk, which the day
//! of the disaster may not have. `restore --sparse` leaves its runs of zeros as holes, and a
//! drill always does, so that drilling an image needs room for its data only.

use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use crate::support::*;

/// A 1 GiB image in `dir` of which a boot sector, 100 KB in the middle at no block boundary,
/// 40 blocks scattered every 24 MiB, and a byte near the end are data: about 300 KB.
fn thin_image(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    let image = fs::File::create(dir.join("vm.img")).unwrap();
    image.set_len(1 << 30).unwrap();
    image.write_all_at(b"boot sector", 0).unwrap();
    image.write_all_at(&noise(100_000, 3), (500 << 20) + 123).unwrap();
    for i in 1..=40 {
        image.write_all_at(&noise(4096, i), i * (24 << 20)).unwrap();
    }
    image.write_all_at(b"!", (1 << 30) - 5000).unwrap();
}

fn occupied(path: &Path) -> u64 {
    fs::metadata(path).unwrap().blocks() * 512
}

#[test]
fn a_thin_image_restores_with_holes_when_asked() {
    let scratch = Scratch::new("sparse");
    let (source, repo) = (scratch.join("src"), scratch.join("repo"));
    thin_image(&source);
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&source));

    let target = scratch.join("sparse");
    ok(cairn(&repo).args(["restore", "latest", "--sparse", "--target"]).arg(&target));
    let restored = target.join("vm.img");
    assert!(fs::read(&restored).unwrap() == fs::read(source.join("vm.img")).unwrap());
    assert!(occupied(&restored) < 1 << 20, "{} bytes on disk", occupied(&restored));
}

#[test]
fn a_full_disk_names_sparse_and_a_drill_needs_room_for_the_data_only() {
    let scratch = Scratch::new("sparse-disk");
    let Some(disk) = Mount::try_tmpfs_of(&scratch.join("disk"), 128) else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let (source, repo) = (scratch.join("src"), scratch.join("repo"));
    // 8 times the 128 MiB disk, but its data fits, and a drill's room to spare (64 MiB) beside
    // it; not the chunks of zeros its scattered blocks lie in, which count as data.
    thin_image(&source);
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&source));

    // Whole, it does not fit: the file is not left cut short, and the error says what to do.
    let dense = disk.0.join("dense");
    let out = run(cairn(&repo).args(["restore", "latest", "--target"]).arg(&dense));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--sparse"), "{err}");
    assert!(!dense.join("vm.img").exists());
    fs::remove_dir_all(&dense).unwrap();

    let drill = json(cairn(&repo).args(["drill", "--scratch"]).arg(&disk.0));
    assert_eq!((drill["checks_passed"].as_u64(), drill["checks_failed"].as_u64()), (Some(1), Some(0)), "{drill}");

    // 80 MiB of data and 64 MiB to spare do not fit: refused before anything is written.
    let dense = scratch.join("dense");
    fs::create_dir_all(&dense).unwrap();
    write_noise_file(&dense.join("data.bin"), 80 << 20, 5);
    ok(cairn(&repo).arg("snapshot").arg(&dense));
    let out = run(cairn(&repo).args(["drill", "--scratch"]).arg(&disk.0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("larger file system"), "{err}");
    assert_eq!(fs::read_dir(&disk.0).unwrap().count(), 0, "nothing left on the disk");

    // A thin image with 80 MiB of data scattered in it: what it takes is known only once
    // written, so the drill goes ahead, and its restore stops before the disk has less than
    // 64 MiB free, and says so.
    fs::remove_file(dense.join("data.bin")).unwrap();
    let image = fs::File::create(dense.join("busy.img")).unwrap();
    image.set_len(1 << 30).unwrap();
    for i in 0..80 {
        image.write_all_at(&noise(1 << 20, 100 + i), i * (12 << 20)).unwrap();
    }
    drop(image);
    ok(cairn(&repo).arg("snapshot").arg(&dense));
    let out = run(cairn(&repo).args(["drill", "--scratch"]).arg(&disk.0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("left free"), "{err}");
    assert_eq!(fs::read_dir(&disk.0).unwrap().count(), 0, "nothing left on the disk");
}
