//! Writes a config drive image for manual boots of the init:
//! `make-config-drive OUT.img < metadata.json`, where the JSON is the
//! `latest.meta-data` object (a `GuestMetadata`).

use std::io::Read;

use firebuild_metadata::boot::config_drive;
use firebuild_metadata::guest::{MmdsDocument, MmdsLatest};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args()
        .nth(1)
        .ok_or("usage: make-config-drive OUT.img < metadata.json")?;
    let mut json = String::new();
    std::io::stdin().read_to_string(&mut json)?;
    let doc = MmdsDocument {
        latest: MmdsLatest {
            meta_data: serde_json::from_str(&json)?,
        },
    };
    std::fs::write(&out, config_drive::encode(&doc)?)?;
    Ok(())
}
