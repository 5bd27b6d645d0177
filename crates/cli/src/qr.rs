//! Invite codes as QR codes: in the terminal (two modules per character cell, so it stays
//! square), and as a PNG file. The API renders the SVG (`qr_svg`). Codes are upper-case letters,
//! digits and `-`, which QR's alphanumeric mode packs densely.

use anyhow::{Context, Result};
use qrcode::render::unicode::Dense1x2;
use qrcode::{Color, EcLevel, QrCode};

fn encode(code: &str) -> Result<QrCode> {
    QrCode::with_error_correction_level(code, EcLevel::M)
        .or_else(|_| QrCode::with_error_correction_level(code, EcLevel::L))
        .context("the invite code is too long for a QR code")
}

/// The QR code drawn with Unicode half blocks, dark on light (as terminals with a dark
/// background need the light quiet zone to scan).
pub fn terminal(code: &str) -> Result<String> {
    Ok(encode(code)?
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Light)
        .light_color(Dense1x2::Dark)
        .quiet_zone(true)
        .build())
}

/// The QR code as a PNG: 8-bit grayscale, `scale` pixels per module, a 4-module quiet zone.
pub fn png(code: &str, scale: usize) -> Result<Vec<u8>> {
    let qr = encode(code)?;
    let width = qr.width();
    let colors = qr.to_colors();
    let side = (width + 8) * scale;
    // Each row: filter byte 0, then one byte per pixel.
    let mut raw = Vec::with_capacity(side * (side + 1));
    for y in 0..side {
        raw.push(0);
        for x in 0..side {
            let (mx, my) = ((x / scale).wrapping_sub(4), (y / scale).wrapping_sub(4));
            let dark = mx < width && my < width && colors[my * width + mx] == Color::Dark;
            raw.push(if dark { 0 } else { 255 });
        }
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut header = Vec::new();
    header.extend((side as u32).to_be_bytes());
    header.extend((side as u32).to_be_bytes());
    header.extend([8, 0, 0, 0, 0]); // 8-bit grayscale, deflate, no filter method, no interlace
    chunk(&mut out, b"IHDR", &header);
    chunk(&mut out, b"IDAT", &zlib_stored(&raw));
    chunk(&mut out, b"IEND", &[]);
    Ok(out)
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend((data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend(kind);
    out.extend(data);
    let crc = crc32(&out[start..]);
    out.extend(crc.to_be_bytes());
}

/// A zlib stream of stored (uncompressed) deflate blocks: PNG viewers need no more.
fn zlib_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = data.chunks(65_535).collect();
    for (i, block) in blocks.iter().enumerate() {
        out.push(u8::from(i + 1 == blocks.len()));
        out.extend((block.len() as u16).to_le_bytes());
        out.extend((!(block.len() as u16)).to_le_bytes());
        out.extend(*block);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in data {
        a = (a + u32::from(byte)) % 65_521;
        b = (b + a) % 65_521;
    }
    out.extend(((b << 16) | a).to_be_bytes());
    out
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_match_known_values() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b"IEND"), 0xae42_6082);
    }

    #[test]
    fn the_png_is_well_formed() {
        let png = png("MSI2-ABCDEFGH234567", 4).unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
        assert!(png.ends_with(&[0xae, 0x42, 0x60, 0x82]));
        let side = u32::from_be_bytes(png[16..20].try_into().unwrap());
        assert_eq!(side % 4, 0);
        // The zlib stream decodes to one row per line plus its filter byte.
        let data_len = u32::from_be_bytes(png[33..37].try_into().unwrap()) as usize;
        let zlib = &png[41..41 + data_len];
        let mut raw: Vec<u8> = Vec::new();
        let mut at = 2;
        loop {
            let last = zlib[at] == 1;
            let len = u16::from_le_bytes([zlib[at + 1], zlib[at + 2]]) as usize;
            raw.extend(&zlib[at + 5..at + 5 + len]);
            at += 5 + len;
            if last {
                break;
            }
        }
        assert_eq!(raw.len(), side as usize * (side as usize + 1));
    }

    #[test]
    fn the_terminal_drawing_is_square() {
        let text = terminal("MSI2-ABCDEFGH234567").unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let width = lines[0].chars().count();
        assert!(lines.iter().all(|l| l.chars().count() == width));
        assert_eq!(lines.len(), width.div_ceil(2));
    }
}
