//! TCP options (RFC 9293 §3.2, RFC 7323, RFC 2018): a tolerant parser and a writer.
//!
//! Parsing never fails and never panics: a malformed option (length below 2, or running past the
//! options area) ends parsing, keeping what was read before it; options with a wrong length for
//! their kind are skipped. Unknown kinds are skipped by their length.

/// End of option list.
pub const KIND_EOL: u8 = 0;
/// No-operation.
pub const KIND_NOP: u8 = 1;
/// Maximum segment size.
pub const KIND_MSS: u8 = 2;
/// Window scale.
pub const KIND_WS: u8 = 3;
/// SACK permitted.
pub const KIND_SACK_PERM: u8 = 4;
/// SACK blocks.
pub const KIND_SACK: u8 = 5;
/// Timestamps.
pub const KIND_TS: u8 = 8;

/// Largest window shift (RFC 7323 §2.3).
pub const MAX_WSCALE: u8 = 14;
/// Most SACK blocks one segment can carry.
pub const MAX_SACK_BLOCKS: usize = 4;

/// The options of one segment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpOptions {
    /// MSS (SYN only).
    pub mss: Option<u16>,
    /// Window shift, clamped to 14 on parse (SYN only).
    pub wscale: Option<u8>,
    /// SACK permitted (SYN only).
    pub sack_permitted: bool,
    /// (TSval, TSecr).
    pub timestamps: Option<(u32, u32)>,
    /// SACK blocks (left, right) as raw sequence numbers; `sack_count` of them are valid.
    pub sack_blocks: [(u32, u32); MAX_SACK_BLOCKS],
    /// Number of valid `sack_blocks`.
    pub sack_count: u8,
}

impl TcpOptions {
    /// The valid SACK blocks.
    pub fn sacks(&self) -> &[(u32, u32)] {
        &self.sack_blocks[..usize::from(self.sack_count).min(MAX_SACK_BLOCKS)]
    }

    /// Parses an options area.
    pub fn parse(mut b: &[u8]) -> Self {
        let mut o = Self::default();
        while let Some(&kind) = b.first() {
            match kind {
                KIND_EOL => break,
                KIND_NOP => {
                    b = &b[1..];
                    continue;
                }
                _ => {}
            }
            let Some(&len) = b.get(1) else { break };
            let len = usize::from(len);
            if len < 2 || len > b.len() {
                break;
            }
            let body = &b[2..len];
            match (kind, body.len()) {
                (KIND_MSS, 2) => o.mss = Some(u16::from_be_bytes([body[0], body[1]])),
                (KIND_WS, 1) => o.wscale = Some(body[0].min(MAX_WSCALE)),
                (KIND_SACK_PERM, 0) => o.sack_permitted = true,
                (KIND_TS, 8) => {
                    o.timestamps = Some((
                        u32::from_be_bytes([body[0], body[1], body[2], body[3]]),
                        u32::from_be_bytes([body[4], body[5], body[6], body[7]]),
                    ))
                }
                (KIND_SACK, n) if n % 8 == 0 => {
                    for blk in body.chunks_exact(8).take(MAX_SACK_BLOCKS) {
                        let l = u32::from_be_bytes([blk[0], blk[1], blk[2], blk[3]]);
                        let r = u32::from_be_bytes([blk[4], blk[5], blk[6], blk[7]]);
                        o.sack_blocks[usize::from(o.sack_count)] = (l, r);
                        o.sack_count += 1;
                    }
                }
                _ => {}
            }
            b = &b[len..];
        }
        o
    }

    /// Bytes [`TcpOptions::write`] produces (a multiple of 4, at most 40).
    pub fn encoded_len(&self) -> usize {
        let mut n: usize = 0;
        if self.mss.is_some() {
            n += 4;
        }
        if self.timestamps.is_some() || self.sack_permitted {
            n += 12; // NOP NOP TS, SACKOK TS, or NOP NOP SACKOK (padded)
            if self.timestamps.is_none() {
                n -= 8;
            }
        }
        if self.wscale.is_some() {
            n += 4;
        }
        let room = 40 - n;
        let blocks = usize::from(self.sack_count)
            .min(MAX_SACK_BLOCKS)
            .min(room.saturating_sub(4) / 8);
        if blocks > 0 {
            n += 4 + 8 * blocks;
        }
        n
    }

    /// Writes the options into `out` (at least [`TcpOptions::encoded_len`] bytes), Linux layout:
    /// MSS, SACKOK+TS (or NOP NOP TS / NOP NOP SACKOK), NOP WS, NOP NOP SACK blocks. Returns the
    /// length written. SACK blocks that do not fit in 40 bytes are dropped (the first ones are kept).
    pub fn write(&self, out: &mut [u8]) -> usize {
        let want = self.encoded_len();
        if out.len() < want {
            return 0;
        }
        let mut i = 0;
        let mut put = |bytes: &[u8], i: &mut usize| {
            out[*i..*i + bytes.len()].copy_from_slice(bytes);
            *i += bytes.len();
        };
        if let Some(mss) = self.mss {
            let m = mss.to_be_bytes();
            put(&[KIND_MSS, 4, m[0], m[1]], &mut i);
        }
        match (self.sack_permitted, self.timestamps) {
            (true, Some(_)) => put(&[KIND_SACK_PERM, 2], &mut i),
            (false, Some(_)) => put(&[KIND_NOP, KIND_NOP], &mut i),
            (true, None) => put(&[KIND_NOP, KIND_NOP, KIND_SACK_PERM, 2], &mut i),
            (false, None) => {}
        }
        if let Some((val, ecr)) = self.timestamps {
            put(&[KIND_TS, 10], &mut i);
            put(&val.to_be_bytes(), &mut i);
            put(&ecr.to_be_bytes(), &mut i);
        }
        if let Some(ws) = self.wscale {
            put(&[KIND_NOP, KIND_WS, 3, ws.min(MAX_WSCALE)], &mut i);
        }
        let room: usize = 40 - i;
        let blocks = usize::from(self.sack_count)
            .min(MAX_SACK_BLOCKS)
            .min(room.saturating_sub(4) / 8);
        if blocks > 0 {
            put(
                &[KIND_NOP, KIND_NOP, KIND_SACK, (2 + 8 * blocks) as u8],
                &mut i,
            );
            for &(l, r) in &self.sack_blocks[..blocks] {
                put(&l.to_be_bytes(), &mut i);
                put(&r.to_be_bytes(), &mut i);
            }
        }
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_syn_options() {
        let o = TcpOptions {
            mss: Some(1460),
            wscale: Some(7),
            sack_permitted: true,
            timestamps: Some((1, 2)),
            ..Default::default()
        };
        let mut b = [0u8; 40];
        let n = o.write(&mut b);
        assert_eq!(n, 20);
        assert_eq!(n, o.encoded_len());
        assert_eq!(TcpOptions::parse(&b[..n]), o);
    }

    #[test]
    fn sack_blocks_fit_in_40_bytes() {
        let mut o = TcpOptions {
            timestamps: Some((5, 6)),
            sack_count: 4,
            ..Default::default()
        };
        for k in 0..4 {
            o.sack_blocks[k] = (k as u32 * 100, k as u32 * 100 + 50);
        }
        let mut b = [0u8; 40];
        let n = o.write(&mut b);
        assert_eq!(n, 40);
        let p = TcpOptions::parse(&b[..n]);
        assert_eq!(p.sacks().len(), 3);
        assert_eq!(p.timestamps, Some((5, 6)));
        o.timestamps = None;
        let n = o.write(&mut b);
        assert_eq!(n, 36);
        assert_eq!(TcpOptions::parse(&b[..n]).sacks().len(), 4);
    }

    #[test]
    fn malformed_never_panics() {
        let cases: [&[u8]; 8] = [
            &[2],
            &[2, 0],
            &[2, 1, 5],
            &[2, 40, 1],
            &[8, 10, 1, 2, 3],
            &[5, 3, 0],
            &[3, 3, 200],
            &[1, 1, 1, 0, 2, 4, 5, 180],
        ];
        for c in cases {
            let _ = TcpOptions::parse(c);
        }
        assert_eq!(TcpOptions::parse(&[3, 3, 200]).wscale, Some(14));
        assert_eq!(TcpOptions::parse(&[1, 1, 1, 0, 2, 4, 5, 180]).mss, None);
        // Exhaustive over short inputs.
        for a in 0..=255u8 {
            for l in 0..=12u8 {
                let mut v = vec![a, l];
                v.extend(std::iter::repeat_n(0xab, usize::from(l % 7)));
                let _ = TcpOptions::parse(&v);
            }
        }
    }
}
