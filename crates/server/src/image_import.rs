//! `midge image import|list`: the host's image store, for people without a
//! registry. Works on the data dir directly, so it runs on the host that
//! runs `midge up`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use midge_image::ImageStore;

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Import a `docker save` tarball or an OCI-layout tarball
    Import {
        /// The tarball
        file: PathBuf,
        /// Name to store it under (default: the name inside the archive)
        #[arg(long = "name")]
        reference: Option<String>,
        /// The data dir of `midge up`
        #[arg(long, env = "MIDGE_DATA_DIR", default_value = "/var/lib/midge")]
        data_dir: PathBuf,
    },
    /// List the images in the host's image store
    #[command(visible_alias = "ls")]
    List {
        #[arg(long, env = "MIDGE_DATA_DIR", default_value = "/var/lib/midge")]
        data_dir: PathBuf,
    },
}

fn open_store(data_dir: &std::path::Path) -> anyhow::Result<ImageStore> {
    let root = data_dir.join("agent/images");
    ImageStore::open(&root)
        .with_context(|| format!("opening the image store in {}", root.display()))
}

pub fn run(command: ImageCommand) -> anyhow::Result<()> {
    match command {
        ImageCommand::Import {
            file,
            reference,
            data_dir,
        } => {
            let store = open_store(&data_dir)?;
            let image = store
                .import_archive(&file, reference.as_deref())
                .with_context(|| format!("importing {}", file.display()))?;
            println!("Imported {} ({})", image.reference, image.image_ref.digest);
            println!("Use it with: midge machine run {}", image.reference);
        }
        ImageCommand::List { data_dir } => {
            let store = open_store(&data_dir)?;
            let mut images = store.list()?;
            images.sort_by(|a, b| a.reference.cmp(&b.reference));
            println!("{:<50} {:<20} {:>10}", "REFERENCE", "DIGEST", "SIZE");
            for image in images {
                let digest: String = image.image_ref.digest.chars().take(19).collect();
                println!(
                    "{:<50} {:<20} {:>8} KB",
                    image.reference,
                    digest,
                    image.size_bytes / 1024
                );
            }
        }
    }
    Ok(())
}
