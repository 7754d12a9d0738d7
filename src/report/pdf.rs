//! PDF output: the figure's SVG converted by svg2pdf (the typst project's converter), with the bundled DejaVu
//! Sans as the only font, so a PDF is the same drawing as the SVG, vector text included.
use crate::{Error, Result};
use std::path::Path;
use svg2pdf::usvg;

pub fn svg_to_pdf(svg: &str, font: &[u8], path: &Path) -> Result<()> {
    let mut db = usvg::fontdb::Database::new();
    db.load_font_data(font.to_vec());
    db.set_sans_serif_family("DejaVu Sans");
    let opt = usvg::Options { fontdb: std::sync::Arc::new(db), font_family: "DejaVu Sans".into(), ..Default::default() };
    let tree = usvg::Tree::from_str(svg, &opt).map_err(|e| Error::Report(format!("figure: pdf: {e}")))?;
    let pdf = svg2pdf::to_pdf(&tree, svg2pdf::ConversionOptions::default(), svg2pdf::PageOptions::default()).map_err(|e| Error::Report(format!("figure: pdf: {e}")))?;
    std::fs::write(path, pdf).map_err(|e| Error::file(path, e))
}
