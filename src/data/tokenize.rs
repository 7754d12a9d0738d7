//! Text cleaning and tokenisation of `hopfield-attention.md` §10.1 (IMDB) and §10.2 (SNLI).
//!
//! **Not reference-compatible** (spec §10 allows a simplified built-in tokenizer if it says so):
//!
//! * HTML stripping is simplified: every `<…>` span is deleted (BeautifulSoup's `get_text()` also joins the text
//!   around tags without a space), and the entities `&amp; &lt; &gt; &quot; &#39; &apos; &nbsp;` and numeric
//!   `&#N;` / `&#xN;` are decoded. Malformed markup, comments and scripts are not handled as an HTML parser would.
//! * The tokenizer re-implements, in order, the rules of NLTK's Toktok that can fire on the cleaned character
//!   set (letters, digits, `[ \ ] ^ _ `` ` ``, `. ! ? ,` and whitespace): `!` and `]` padded; `?` padded when
//!   followed by whitespace or the end; tab → ` &#9; `; `[` followed by a space; runs of ≥ 2 commas padded; a
//!   single comma padded unless followed by a digit or a comma or preceded by a comma; backticks padded and
//!   "`` ` ` ``" merged to "``"; runs of ≥ 2 periods padded; a final period (not preceded by a period) split
//!   off; then whitespace splitting. It has not been compared with NLTK on a corpus.
//!
//! Tokens are then stripped and lowercased (§10.1 step 3). The reference's "stopword removal" removes nothing.
/// §10.1 step 2: strip HTML, delete "[…]" spans, delete every character outside a–z, A–z (which includes
/// `[ \ ] ^ _` and the backtick), 0–9, `. ! ? ,` and whitespace.
pub fn clean_imdb(text: &str) -> String {
    let t = delete_bracket_spans(&strip_html(text));
    t.chars().filter(|&c| keep_char(c, true)).collect()
}

/// §10.2 step 4 (for a present sentence; a missing one is a single space): strip HTML, delete "[…]" spans,
/// surround `.`, `?`, `!` with spaces, delete every character outside a–z, A–z, 0–9, `. ? !` and whitespace
/// (commas are deleted here).
pub fn clean_snli(text: &str) -> String {
    let t = delete_bracket_spans(&strip_html(text));
    let mut s = String::with_capacity(t.len() + 8);
    for c in t.chars() {
        if matches!(c, '.' | '?' | '!') {
            s.push(' ');
            s.push(c);
            s.push(' ');
        } else {
            s.push(c);
        }
    }
    s.chars().filter(|&c| keep_char(c, false)).collect()
}

fn keep_char(c: char, comma: bool) -> bool {
    c.is_ascii_lowercase()
        || ('A'..='z').contains(&c)
        || c.is_ascii_digit()
        || matches!(c, '.' | '!' | '?')
        || (comma && c == ',')
        || c.is_whitespace()
}

/// Deletes `<…>` spans and decodes the common entities (see the module note).
pub fn strip_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('<') {
        out.push_str(&rest[..i]);
        match rest[i..].find('>') {
            Some(j) => rest = &rest[i + j + 1..],
            None => {
                out.push_str(&rest[i..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    decode_entities(&out)
}

fn decode_entities(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let end = tail[1..].find(|c: char| c == ';' || c.is_whitespace() || c == '&').map(|j| j + 1);
        let decoded = end.filter(|&j| tail.as_bytes().get(j) == Some(&b';')).and_then(|j| {
            let name = &tail[1..j];
            let ch = match name {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" | "#39" => Some('\''),
                "nbsp" => Some('\u{a0}'),
                _ if name.starts_with("#x") || name.starts_with("#X") => u32::from_str_radix(&name[2..], 16).ok().and_then(char::from_u32),
                _ if name.starts_with('#') => name[1..].parse::<u32>().ok().and_then(char::from_u32),
                _ => None,
            };
            ch.map(|c| (c, j + 1))
        });
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &tail[len..];
            }
            None => {
                out.push('&');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Deletes every `[` … first following `]` span (regex `\[[^\]]*\]`); an unclosed `[` is kept.
pub fn delete_bracket_spans(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('[') {
        match rest[i..].find(']') {
            Some(j) => {
                out.push_str(&rest[..i]);
                rest = &rest[i + j + 1..];
            }
            None => break,
        }
    }
    out.push_str(rest);
    out
}

/// Toktok on cleaned text (see the module note), then strip and lowercase each token.
pub fn tokenize(text: &str) -> Vec<String> {
    toktok(text).into_iter().map(|t| t.trim().to_lowercase()).filter(|t| !t.is_empty()).collect()
}

/// The Toktok rules that apply to the cleaned character set, in Toktok's order; returns the raw tokens.
pub fn toktok(text: &str) -> Vec<String> {
    let s: Vec<char> = text.chars().map(|c| if c == '\u{a0}' { ' ' } else { c }).collect();
    // FUNKY_PUNCT_1 (the members that survive cleaning): `!` and `]`.
    let s = map_chars(&s, |_, c| matches!(c, '!' | ']').then(|| format!(" {c} ")));
    // URL_FOE_2: `?` not followed by a non-space.
    let s = {
        let src = s.clone();
        map_chars(&s, |i, c| (c == '?' && src.get(i + 1).is_none_or(|n| n.is_whitespace())).then(|| " ? ".to_string()))
    };
    // TAB.
    let s = map_chars(&s, |_, c| (c == '\t').then(|| " &#9; ".to_string()));
    // OPEN_PUNCT_RE / CLOSE_PUNCT_RE: `[` and `]` get a space after.
    let s = map_chars(&s, |_, c| matches!(c, '[' | ']').then(|| format!("{c} ")));
    // MULTI_COMMAS, then COMMA_IN_NUM.
    let s = pad_runs(&s, ',', 2);
    let s = {
        let src = s.clone();
        map_chars(&s, |i, c| {
            let prev_comma = i > 0 && src[i - 1] == ',';
            let next_blocks = src.get(i + 1).is_some_and(|n| *n == ',' || n.is_ascii_digit());
            (c == ',' && !prev_comma && !next_blocks).then(|| " , ".to_string())
        })
    };
    // PROB_SINGLE_QUOTES (the backtick) and STUPID_QUOTES_1.
    let s = map_chars(&s, |_, c| (c == '`').then(|| " ` ".to_string()));
    let s: Vec<char> = s.iter().collect::<String>().replace(" ` ` ", " `` ").chars().collect();
    // MULTI_DOTS, then FINAL_PERIOD_1 (`(?<!\.)\.$`; `$` also matches before one final newline).
    let mut s = pad_runs(&s, '.', 2);
    let end = if s.last() == Some(&'\n') { s.len() - 1 } else { s.len() };
    if end >= 1 && s[end - 1] == '.' && (end < 2 || s[end - 2] != '.') {
        s.insert(end - 1, ' ');
    }
    s.iter().collect::<String>().split_whitespace().map(str::to_string).collect()
}

/// Replaces each char for which `f(index, char)` returns Some(replacement).
fn map_chars(s: &[char], f: impl Fn(usize, char) -> Option<String>) -> Vec<char> {
    let mut out = Vec::with_capacity(s.len() + 8);
    for (i, &c) in s.iter().enumerate() {
        match f(i, c) {
            Some(r) => out.extend(r.chars()),
            None => out.push(c),
        }
    }
    out
}

/// Pads runs of at least `min` copies of `c` with a space on each side.
fn pad_runs(s: &[char], c: char, min: usize) -> Vec<char> {
    let mut out = Vec::with_capacity(s.len() + 8);
    let mut i = 0;
    while i < s.len() {
        if s[i] == c {
            let mut j = i;
            while j < s.len() && s[j] == c {
                j += 1;
            }
            if j - i >= min {
                out.push(' ');
                out.extend(&s[i..j]);
                out.push(' ');
            } else {
                out.extend(&s[i..j]);
            }
            i = j;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}
