//! A small PDF writer for documents made of lines of text (invoices): A4 pages, the standard
//! Helvetica fonts (no font is embedded), text placed at given positions, pages added as the
//! lines run out. Text is encoded as WinAnsi, so Western European text and the common currency
//! symbols (€ £ ¥) show as written, ₹ as `INR `; anything else becomes `?`.

use std::fmt::Write as _;

/// A4, in points.
const WIDTH: f32 = 595.0;
const HEIGHT: f32 = 842.0;
const MARGIN: f32 = 50.0;

/// One line: text pieces at horizontal positions (points from the left edge).
#[derive(Debug, Clone, Default)]
pub struct Line {
    pub size: f32,
    pub bold: bool,
    pub cells: Vec<(f32, String)>,
    /// Extra space before the line, in points.
    pub space_before: f32,
}

impl Line {
    pub fn text(size: f32, text: impl Into<String>) -> Self {
        Self {
            size,
            cells: vec![(MARGIN, text.into())],
            ..Self::default()
        }
    }

    pub fn bold(mut self) -> Self {
        self.bold = true;
        self
    }

    pub fn after(mut self, space: f32) -> Self {
        self.space_before = space;
        self
    }

    /// Another piece of text on the same line, at `x`.
    pub fn at(mut self, x: f32, text: impl Into<String>) -> Self {
        self.cells.push((x, text.into()));
        self
    }
}

/// `text` as a PDF string literal's bytes in WinAnsi, with `(`, `)` and `\` escaped.
fn encode(text: &str, out: &mut Vec<u8>) {
    out.push(b'(');
    for c in text.chars() {
        // A currency sign WinAnsi lacks is written as its code.
        if c == '₹' {
            out.extend_from_slice(b"INR ");
            continue;
        }
        let byte = match c {
            '(' | ')' | '\\' => {
                out.push(b'\\');
                c as u8
            }
            ' '..='~' => c as u8,
            '€' => 0x80,
            '–' => 0x96,
            '—' => 0x97,
            '‘' => 0x91,
            '’' => 0x92,
            '“' => 0x93,
            '”' => 0x94,
            '•' => 0x95,
            '…' => 0x85,
            '\u{a0}'..='\u{ff}' => c as u32 as u8,
            _ => b'?',
        };
        out.push(byte);
    }
    out.push(b')');
}

/// The PDF of `lines`, top to bottom.
pub fn render(title: &str, lines: &[Line]) -> Vec<u8> {
    // Lay out the pages' content streams.
    let mut pages: Vec<Vec<u8>> = Vec::new();
    let mut page: Vec<u8> = Vec::new();
    let mut y = HEIGHT - MARGIN;
    for line in lines {
        let step = line.size * 1.4 + line.space_before;
        if y - step < MARGIN {
            pages.push(std::mem::take(&mut page));
            y = HEIGHT - MARGIN;
        }
        y -= step;
        let font = if line.bold { "F2" } else { "F1" };
        for (x, text) in &line.cells {
            page.extend_from_slice(
                format!("BT /{font} {} Tf {x:.1} {y:.1} Td ", line.size).as_bytes(),
            );
            encode(text, &mut page);
            page.extend_from_slice(b" Tj ET\n");
        }
    }
    pages.push(page);

    let mut out: Vec<u8> = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n".to_vec();
    let mut offsets: Vec<usize> = Vec::new();
    let mut object = |out: &mut Vec<u8>, body: &[u8]| {
        offsets.push(out.len());
        let n = offsets.len();
        out.extend_from_slice(format!("{n} 0 obj\n").as_bytes());
        out.extend_from_slice(body);
        out.extend_from_slice(b"\nendobj\n");
    };
    // 1 catalog, 2 page tree, 3 and 4 fonts, 5 info; then each page and its content.
    let first_page = 6;
    let kids: String = (0..pages.len())
        .map(|i| format!("{} 0 R", first_page + 2 * i))
        .collect::<Vec<_>>()
        .join(" ");
    object(&mut out, b"<< /Type /Catalog /Pages 2 0 R >>");
    object(
        &mut out,
        format!("<< /Type /Pages /Kids [{kids}] /Count {} >>", pages.len()).as_bytes(),
    );
    object(
        &mut out,
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    );
    object(
        &mut out,
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica-Bold /Encoding /WinAnsiEncoding >>",
    );
    let mut info = b"<< /Title ".to_vec();
    encode(title, &mut info);
    info.extend_from_slice(b" /Producer (billing) >>");
    object(&mut out, &info);
    for (i, content) in pages.iter().enumerate() {
        let contents = first_page + 2 * i + 1;
        object(
            &mut out,
            format!(
                "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {WIDTH} {HEIGHT}] \
                 /Resources << /Font << /F1 3 0 R /F2 4 0 R >> >> /Contents {contents} 0 R >>"
            )
            .as_bytes(),
        );
        let mut stream = format!("<< /Length {} >>\nstream\n", content.len()).into_bytes();
        stream.extend_from_slice(content);
        stream.extend_from_slice(b"\nendstream");
        object(&mut out, &stream);
    }
    let xref = out.len();
    let mut table = format!("xref\n0 {}\n0000000000 65535 f \n", offsets.len() + 1);
    for o in &offsets {
        let _ = writeln!(table, "{o:010} 00000 n ");
    }
    let _ = write!(
        table,
        "trailer\n<< /Size {} /Root 1 0 R /Info 5 0 R >>\nstartxref\n{xref}\n%%EOF\n",
        offsets.len() + 1
    );
    out.extend_from_slice(table.as_bytes());
    out
}

/// The left margin, for callers laying out columns.
pub const LEFT: f32 = MARGIN;
/// The right edge of the text area.
pub const RIGHT: f32 = WIDTH - MARGIN;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_encoded_as_winansi() {
        let mut out = Vec::new();
        encode("a (b) \\ 5 € £ é ✓", &mut out);
        assert_eq!(out, b"(a \\(b\\) \\\\ 5 \x80 \xa3 \xe9 ?)".to_vec());
    }

    #[test]
    fn the_rupee_sign_is_written_as_its_code() {
        let mut out = Vec::new();
        encode("₹1,234.00", &mut out);
        assert_eq!(out, b"(INR 1,234.00)".to_vec());
    }

    #[test]
    fn the_cross_reference_table_points_at_every_object() {
        let lines: Vec<Line> = (0..120)
            .map(|i| Line::text(11.0, format!("line {i}")))
            .collect();
        let pdf = render("Test", &lines);
        let text = String::from_utf8_lossy(&pdf).into_owned();
        assert!(text.starts_with("%PDF-1.4"));
        assert!(text.trim_end().ends_with("%%EOF"));
        // 120 lines of 15.4 points do not fit on one A4 page.
        assert!(text.contains("/Count 3"), "three pages");
        // Offsets count bytes (the header's binary comment is not UTF-8).
        let tail_at = text.rfind("startxref\n").unwrap();
        let xref: usize = text[tail_at + 10..]
            .lines()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(pdf[xref..].starts_with(b"xref"));
        let table = String::from_utf8(pdf[xref..].to_vec()).unwrap();
        let entries: Vec<usize> = table
            .lines()
            .skip(3)
            .take_while(|l| l.ends_with(" n "))
            .map(|l| l[..10].parse().unwrap())
            .collect();
        assert_eq!(entries.len(), 5 + 2 * 3);
        for (i, offset) in entries.iter().enumerate() {
            assert!(
                pdf[*offset..].starts_with(format!("{} 0 obj", i + 1).as_bytes()),
                "object {}",
                i + 1
            );
        }
    }
}
