//! The agent's challenge: after the work is done, the server names byte ranges the agent must
//! read back from the disk and hash, and checks the answers. A deploy is challenged on random
//! chunks of the image's content index (the raw content per MiB, so qcow2 and raw.zst images
//! are checked like raw ones); a wipe on random sample ranges of every disk, which must read
//! back as zeros. The agent cannot prepare its report before it knows the ranges, so a report
//! that only repeats what the claim said (the audit's forged deploy hash, a wipe that read
//! nothing) fails.
//!
//! `issue` picks and stores the ranges once per boot (the route calls it); `check_deploy` and
//! `check_wipe` are the pure verdicts the verify and wipe steps apply.

use images::{ImageFormat, ImageStore};
use inventory::{Inventory, Job, JobKind};
use proto::{ByteRange, Challenge, ChallengeRequest, DiskRanges, RangeHash, WipedDisk};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Chunks of the content index a deploy is challenged on.
pub const DEPLOY_CHUNKS: usize = 8;
/// Ranges per disk a wipe is challenged on (besides the first and the last MiB).
pub const WIPE_SAMPLES: usize = 16;
/// Bytes per wipe sample.
const SAMPLE_BYTES: u64 = 1 << 20;
/// At most this many disks are challenged in one request (a machine has fewer).
const MAX_DISKS: usize = 64;

/// What the server stored when it issued a challenge: the ranges, and for a deploy the hash
/// each must read back as (never sent to the agent).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct Issued {
    /// Deploy: chunks of the content index with their expected hashes.
    pub deploy: Vec<RangeHash>,
    /// Wipe: ranges per disk; each must read back as zeros.
    pub wipe: Vec<DiskRanges>,
}

impl Issued {
    /// The part the agent sees.
    pub(crate) fn challenge(&self) -> Challenge {
        Challenge {
            ranges: self
                .deploy
                .iter()
                .map(|r| ByteRange {
                    offset: r.offset,
                    length: r.length,
                })
                .collect(),
            disks: self.wipe.clone(),
        }
    }
}

/// Why a challenge cannot be issued.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ChallengeError {
    /// The job's kind has nothing to read back.
    #[error("{0}")]
    NotApplicable(String),
    /// The image's content index cannot be read or built.
    #[error("the image's content index is not available: {0}")]
    Index(String),
    /// The database.
    #[error(transparent)]
    Inventory(#[from] inventory::Error),
}

/// The job's challenge: the one stored for this boot, else one picked now and stored (so a
/// retried request gets the same ranges, never a second draw).
pub(crate) async fn issue(
    inv: &Inventory,
    images: &ImageStore,
    job: &Job,
    req: &ChallengeRequest,
) -> Result<Challenge, ChallengeError> {
    if let Some(stored) = inv.agent_challenge(job.id).await? {
        return Ok(decode(&stored)?.challenge());
    }
    let issued = match job.kind {
        JobKind::Reimage => {
            let iid = job.image_id.ok_or_else(|| {
                ChallengeError::NotApplicable("the job's image was deleted".into())
            })?;
            let img = inv.image_by_id(iid).await?;
            let format: ImageFormat = img.format.parse().map_err(ChallengeError::Index)?;
            let index = images
                .content_index(&img.sha256, format)
                .await
                .map_err(|e| ChallengeError::Index(e.to_string()))?;
            let chunks = index.chunks.len() as u64;
            let picked = pick_distinct(&mut rand::thread_rng(), chunks, DEPLOY_CHUNKS);
            Issued {
                deploy: picked
                    .into_iter()
                    .filter_map(|i| {
                        let (offset, length) = index.range(i)?;
                        Some(RangeHash {
                            offset,
                            length,
                            sha256: index.chunk_hex(i)?,
                        })
                    })
                    .collect(),
                wipe: Vec::new(),
            }
        }
        JobKind::Wipe => Issued {
            deploy: Vec::new(),
            wipe: req
                .disks
                .iter()
                .take(MAX_DISKS)
                .map(|d| DiskRanges {
                    name: d.name.chars().take(64).collect(),
                    ranges: wipe_samples(&mut rand::thread_rng(), d.size_bytes, WIPE_SAMPLES),
                })
                .collect(),
        },
        JobKind::Inspect => {
            return Err(ChallengeError::NotApplicable(
                "an inspect job has nothing to read back".into(),
            ))
        }
    };
    let value = serde_json::to_value(&issued)
        .map_err(|e| ChallengeError::Index(format!("cannot encode the challenge: {e}")))?;
    let stored = inv.agent_challenge_once(job.id, &value).await?;
    Ok(decode(&stored)?.challenge())
}

/// Reads a stored challenge back.
pub(crate) fn decode(stored: &serde_json::Value) -> Result<Issued, inventory::Error> {
    serde_json::from_value(stored.clone()).map_err(|e| inventory::Error::Invalid {
        field: "jobs.agent_challenge".into(),
        message: format!("stored JSON is damaged: {e}"),
    })
}

/// Up to `count` distinct numbers below `n`, in increasing order.
pub(crate) fn pick_distinct(rng: &mut impl Rng, n: u64, count: usize) -> Vec<u64> {
    if n <= count as u64 {
        return (0..n).collect();
    }
    let mut picked = std::collections::BTreeSet::new();
    while picked.len() < count {
        picked.insert(rng.gen_range(0..n));
    }
    picked.into_iter().collect()
}

/// The sample ranges of a wipe challenge on a disk of `size` bytes: the first and the last
/// MiB, and `count` more at random 4 KiB-aligned offsets.
pub(crate) fn wipe_samples(rng: &mut impl Rng, size: u64, count: usize) -> Vec<ByteRange> {
    if size == 0 {
        return Vec::new();
    }
    let length = SAMPLE_BYTES.min(size);
    let last = (size - length) & !4095;
    let mut offsets = std::collections::BTreeSet::from([0, last]);
    for _ in 0..count {
        offsets.insert(rng.gen_range(0..=last) & !4095);
    }
    offsets
        .into_iter()
        .map(|offset| ByteRange {
            offset,
            length: length.min(size - offset),
        })
        .collect()
}

/// The answer to the range `want`, if the agent gave one.
fn answer<'a>(answers: &'a [RangeHash], want: &ByteRange) -> Option<&'a RangeHash> {
    answers
        .iter()
        .find(|a| a.offset == want.offset && a.length == want.length)
}

/// Checks a deploy's answers against the stored challenge; the log line when they hold.
pub(crate) fn check_deploy(issued: &Issued, answers: &[RangeHash]) -> Result<String, String> {
    if issued.deploy.is_empty() {
        return Err("the deploy challenge names no range (the image is empty)".into());
    }
    for want in &issued.deploy {
        let range = ByteRange {
            offset: want.offset,
            length: want.length,
        };
        let Some(got) = answer(answers, &range) else {
            return Err(format!(
                "the agent did not answer the deploy challenge for bytes {}..{}: \
                 the report does not show the image on the disk",
                want.offset,
                want.offset + want.length
            ));
        };
        if !got.sha256.eq_ignore_ascii_case(&want.sha256) {
            return Err(format!(
                "bytes {}..{} of the disk read back with sha256 {}, the image has {} there: \
                 the image is not on the disk",
                want.offset,
                want.offset + want.length,
                got.sha256,
                want.sha256
            ));
        }
    }
    Ok(format!(
        "deploy challenge passed: {} chunks chosen by the server read back as the image",
        issued.deploy.len()
    ))
}

/// Whether a wipe method leaves content that need not read back as zeros (a crypto erase
/// leaves ciphertext under a destroyed key).
fn leaves_noise(method: &str) -> bool {
    matches!(method, "nvme-format-crypto" | "nvme-sanitize-crypto")
}

/// sha256 of `len` zero bytes.
fn zeros_sha256(len: u64) -> String {
    let mut h = Sha256::new();
    let block = [0u8; 4096];
    let mut left = len;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        h.update(&block[..n]);
        left -= n as u64;
    }
    hex::encode(h.finalize())
}

/// Checks every wiped disk's samples against the stored challenge: each range the server
/// chose for the disk is answered, and reads back as zeros (a crypto erase: answered at
/// least). The line per disk, by kernel name, that the certificate records.
pub(crate) fn check_wipe(
    issued: &Issued,
    wiped: &[WipedDisk],
) -> Result<Vec<(String, String)>, String> {
    let mut lines = Vec::with_capacity(wiped.len());
    for w in wiped {
        let Some(chosen) = issued.wipe.iter().find(|d| d.name == w.name) else {
            return Err(format!(
                "disk {} was not in the wipe challenge: the agent never asked where to read it back",
                w.name
            ));
        };
        let noise = leaves_noise(&w.method);
        for want in &chosen.ranges {
            let Some(got) = answer(&w.samples, want) else {
                return Err(format!(
                    "disk {}: no sample at byte {} (length {}), which the server chose: \
                     the wipe was not read back",
                    w.name, want.offset, want.length
                ));
            };
            if !noise && !got.sha256.eq_ignore_ascii_case(&zeros_sha256(want.length)) {
                return Err(format!(
                    "disk {}: the {} bytes at byte {} do not read back as zeros after the wipe",
                    w.name, want.length, want.offset
                ));
            }
        }
        let line = if noise {
            format!(
                "{} ranges at offsets the server chose were read back (a crypto erase leaves ciphertext, not zeros)",
                chosen.ranges.len()
            )
        } else {
            format!(
                "{} ranges at offsets the server chose read back as zeros",
                chosen.ranges.len()
            )
        };
        lines.push((w.name.clone(), line));
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(7)
    }

    #[test]
    fn picks_are_distinct_sorted_and_in_range() {
        let p = pick_distinct(&mut rng(), 100, 8);
        assert_eq!(p.len(), 8);
        assert!(p.windows(2).all(|w| w[0] < w[1]) && p.iter().all(|&i| i < 100));
        assert_eq!(pick_distinct(&mut rng(), 3, 8), vec![0, 1, 2]);
        let s = wipe_samples(&mut rng(), (1 << 30) + 512, 16);
        assert_eq!(s[0].offset, 0);
        let last = s.last().expect("samples");
        assert!(last.offset + last.length <= (1 << 30) + 512);
        assert!(s
            .iter()
            .all(|r| r.offset % 4096 == 0 && r.length == 1 << 20));
        assert_eq!(
            wipe_samples(&mut rng(), 1000, 16),
            vec![ByteRange {
                offset: 0,
                length: 1000
            }]
        );
    }

    fn rh(offset: u64, length: u64, sha256: &str) -> RangeHash {
        RangeHash {
            offset,
            length,
            sha256: sha256.into(),
        }
    }

    #[test]
    fn a_deploy_must_answer_every_chunk_with_the_images_hash() {
        let issued = Issued {
            deploy: vec![rh(0, 10, "aa"), rh(1 << 20, 10, "bb")],
            wipe: Vec::new(),
        };
        assert!(check_deploy(&issued, &[rh(0, 10, "AA"), rh(1 << 20, 10, "bb")]).is_ok());
        // The audit's forger: the claim's hash and no answers.
        let e = check_deploy(&issued, &[]).expect_err("no answers");
        assert!(e.contains("did not answer the deploy challenge"), "{e}");
        let e = check_deploy(&issued, &[rh(0, 10, "aa"), rh(1 << 20, 10, "cc")])
            .expect_err("wrong chunk");
        assert!(e.contains("not on the disk") && e.contains("cc"), "{e}");
    }

    #[test]
    fn a_wipe_must_read_back_zeros_where_the_server_chose() {
        let ranges = vec![ByteRange {
            offset: 0,
            length: 4096,
        }];
        let issued = Issued {
            deploy: Vec::new(),
            wipe: vec![DiskRanges {
                name: "vda".into(),
                ranges,
            }],
        };
        let disk = |method: &str, samples| WipedDisk {
            name: "vda".into(),
            method: method.into(),
            samples,
            ..Default::default()
        };
        let zero = vec![rh(0, 4096, &zeros_sha256(4096))];
        let lines = check_wipe(&issued, &[disk("zero", zero)]).expect("zeros");
        assert!(lines[0].1.contains("1 ranges"), "{lines:?}");
        let e = check_wipe(&issued, &[disk("zero", vec![])]).expect_err("forged");
        assert!(e.contains("was not read back"), "{e}");
        let e = check_wipe(&issued, &[disk("zero", vec![rh(0, 4096, "ab")])]).expect_err("data");
        assert!(e.contains("do not read back as zeros"), "{e}");
        assert!(check_wipe(
            &issued,
            &[disk("nvme-format-crypto", vec![rh(0, 4096, "ab")])]
        )
        .is_ok());
        let other = WipedDisk {
            name: "vdb".into(),
            ..Default::default()
        };
        assert!(check_wipe(&issued, &[other]).is_err());
    }
}
