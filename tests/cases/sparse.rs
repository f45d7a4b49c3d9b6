//! Files with holes: a thin VM image restored whole needs its size on the disk, which the day
//! of the disaster may not have. `restore --sparse` leaves its runs of zeros as holes, and a
//! drill always does, so that drilling an image needs room for its data only.

use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};

use crate::support::*;

#[test]
fn a_thin_image_restores_with_holes_when_asked_and_drills_in_the_room_of_its_data() {
    let scratch = Scratch::new("sparse");
    let Some(disk) = Mount::try_tmpfs_of(&scratch.join("disk"), 128) else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let (source, repo) = (scratch.join("src"), scratch.join("repo"));
    fs::create_dir_all(&source).unwrap();
    // 1 GiB, of which a boot sector, 100 KB in the middle at no block boundary, and a byte
    // near the end are data: 8 times the 128 MiB disk, but its data fits, and a drill's room
    // to spare (64 MiB) beside it.
    let image = fs::File::create(source.join("vm.img")).unwrap();
    image.set_len(1 << 30).unwrap();
    image.write_all_at(b"boot sector", 0).unwrap();
    image.write_all_at(&noise(100_000, 3), (500 << 20) + 123).unwrap();
    image.write_all_at(b"!", (1 << 30) - 5000).unwrap();
    drop(image);
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&source));

    // Whole, it does not fit: the file is not left cut short, and the error says what to do.
    let dense = disk.0.join("dense");
    let out = run(cairn(&repo).args(["restore", "latest", "--target"]).arg(&dense));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--sparse"), "{err}");
    assert!(!dense.join("vm.img").exists());
    fs::remove_dir_all(&dense).unwrap();

    let sparse = disk.0.join("sparse");
    ok(cairn(&repo).args(["restore", "latest", "--sparse", "--target"]).arg(&sparse));
    let restored = sparse.join("vm.img");
    assert!(fs::read(&restored).unwrap() == fs::read(source.join("vm.img")).unwrap());
    let occupied = fs::metadata(&restored).unwrap().blocks() * 512;
    assert!(occupied < 1 << 20, "{occupied} bytes on disk");
    fs::remove_dir_all(&sparse).unwrap();

    let drill = json(cairn(&repo).args(["drill", "--scratch"]).arg(&disk.0));
    assert_eq!((drill["checks_passed"].as_u64(), drill["checks_failed"].as_u64()), (Some(1), Some(0)), "{drill}");
}
