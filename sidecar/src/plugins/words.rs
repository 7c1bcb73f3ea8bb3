//! Finding listed words and phrases in chat text: whole words, in any letter case, in any
//! script. Shared by the `blacklist` (blocked and muted words) and `webhook` (triggers)
//! plugins.
//!
//! How a text is compared with the list:
//!
//! * Both are *folded* the same way: Unicode lowercase mapping, character by character
//!   (`char::to_lowercase`), with two extra folds so that spellings of one word meet: a
//!   final sigma `ς` becomes `σ`, and `İ` becomes `i` (its default lowercase, `i` plus a
//!   combining dot, would never match a plain `i`). This is lowercasing, not full case
//!   folding: `straße` matches `STRAẞE` and `Straße`, but not `STRASSE`; accents count
//!   (`cafe` does not match `café`).
//! * Runs of whitespace count as one space, so a phrase matches across line breaks and
//!   doubled spaces; invisible characters (zero-width spaces, soft hyphens, joiners,
//!   direction marks, variation selectors) are skipped, so they cannot hide a word.
//! * A match counts only as a whole word: the characters just before and after it (ignoring
//!   invisible ones) must not be word characters (letters, digits, `_`, combining marks).
//!   `ass` does not match `class` or `ass_hat`, but matches `Ass!`, `(ass)` and `😀ass😀`.
//!   Scripts written without spaces between words (Chinese, Japanese, Thai) therefore match
//!   only where the listed word is set off by punctuation, spaces or the ends of the text.
//! * Among matches that overlap, the leftmost wins, then the longest.
//!
//! Folding can change byte lengths (`K`, the Kelvin sign, is 3 bytes, its lowercase `k` one),
//! so every match is mapped back to a byte range of the original text; masking replaces
//! exactly the characters of those ranges and leaves the rest byte for byte.

use std::ops::Range;

use aho_corasick::{AhoCorasick, MatchKind};

/// Why a list cannot be compiled (in practice only a list far beyond any sane size).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot compile the word list: {0}")]
pub struct WordsError(String);

/// A compiled list of words and phrases.
#[derive(Debug, Clone, Default)]
pub struct Words {
    /// Finds every folded word in a folded text; `None` for an empty list.
    automaton: Option<AhoCorasick>,
    /// The folded words, indexed like the automaton's patterns.
    words: Vec<String>,
}

/// One match: where it is in the original text, and which listed word it is (folded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found<'w> {
    /// Byte range in the original text, on character boundaries.
    pub range: Range<usize>,
    /// The listed word, as folded by [`normalize`].
    pub word: &'w str,
}

impl Words {
    /// Compiles `words`. Entries that are empty once folded (blank, whitespace only) are
    /// ignored, as are repeats.
    pub fn new<I, S>(words: I) -> Result<Self, WordsError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut folded: Vec<String> = words
            .into_iter()
            .map(|w| normalize(w.as_ref()))
            .filter(|w| !w.is_empty())
            .collect();
        folded.sort();
        folded.dedup();
        if folded.is_empty() {
            return Ok(Self::default());
        }
        // Standard semantics so that every occurrence is reported (overlapping search):
        // the whole-word rule is applied afterwards, and a shorter word may be whole where
        // a longer one starting at the same place is not.
        let automaton = AhoCorasick::builder()
            .match_kind(MatchKind::Standard)
            .build(&folded)
            .map_err(|e| WordsError(e.to_string()))?;
        Ok(Self {
            automaton: Some(automaton),
            words: folded,
        })
    }

    /// Whether the list holds no word at all (nothing ever matches).
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// How many distinct words the list holds.
    pub fn len(&self) -> usize {
        self.words.len()
    }

    /// The first (leftmost, then longest) whole-word match in `text`.
    pub fn find(&self, text: &str) -> Option<Found<'_>> {
        self.matches(text).into_iter().next()
    }

    /// Every whole-word match in `text`, left to right, not overlapping.
    pub fn matches(&self, text: &str) -> Vec<Found<'_>> {
        let Some(automaton) = &self.automaton else {
            return Vec::new();
        };
        let folded = Folded::new(text);
        let Ok(iter) = automaton.try_find_overlapping_iter(folded.text.as_str()) else {
            // Only an automaton built for another match kind refuses; ours is Standard.
            return Vec::new();
        };
        let mut candidates: Vec<Found<'_>> = iter
            .filter_map(|m| {
                let range = folded.original_range(m.start(), m.end())?;
                whole_word(text, &range).then(|| Found {
                    range,
                    word: self.words[m.pattern().as_usize()].as_str(),
                })
            })
            .collect();
        // Leftmost first, and at one start the longest first; then keep what does not
        // overlap an earlier pick.
        candidates.sort_by(|a, b| {
            a.range
                .start
                .cmp(&b.range.start)
                .then(b.range.end.cmp(&a.range.end))
        });
        let mut picked: Vec<Found<'_>> = Vec::with_capacity(candidates.len());
        for found in candidates {
            if picked
                .last()
                .is_none_or(|last| found.range.start >= last.range.end)
            {
                picked.push(found);
            }
        }
        picked
    }

    /// `text` with every character of every match replaced by `mask`; the rest is kept
    /// byte for byte.
    pub fn mask(&self, text: &str, mask: &str) -> String {
        let found = self.matches(text);
        if found.is_empty() {
            return text.to_owned();
        }
        let mut out = String::with_capacity(text.len() + mask.len() * 8);
        let mut at = 0;
        for f in found {
            out.push_str(&text[at..f.range.start]);
            for _ in text[f.range.clone()].chars() {
                out.push_str(mask);
            }
            at = f.range.end;
        }
        out.push_str(&text[at..]);
        out
    }
}

/// A word or phrase as the matcher compares it: trimmed, whitespace runs as one space,
/// invisible characters dropped, folded to lowercase (see the module doc). Empty when
/// nothing matchable is left.
pub fn normalize(word: &str) -> String {
    let mut out = String::with_capacity(word.len());
    let mut space = false;
    for c in word.chars() {
        if is_invisible(c) {
            continue;
        }
        if c.is_whitespace() {
            space = !out.is_empty();
            continue;
        }
        if space {
            out.push(' ');
            space = false;
        }
        push_folded(&mut out, c);
    }
    out
}

/// A text folded for matching, with the way back to the original's bytes.
struct Folded {
    text: String,
    /// One per original character that left something in `text`, in order.
    segments: Vec<Segment>,
}

/// Where one original character went.
#[derive(Debug, Clone, Copy)]
struct Segment {
    /// Its bytes in the folded text (never empty).
    folded: (usize, usize),
    /// Its bytes in the original text.
    original: (usize, usize),
}

impl Folded {
    fn new(original: &str) -> Self {
        let mut text = String::with_capacity(original.len());
        let mut segments = Vec::with_capacity(original.len());
        let mut in_space = false;
        for (at, c) in original.char_indices() {
            let start = text.len();
            if is_invisible(c) {
                continue;
            }
            if c.is_whitespace() {
                if in_space {
                    // The run's first whitespace stands for all of it.
                    continue;
                }
                in_space = true;
                text.push(' ');
            } else {
                in_space = false;
                push_folded(&mut text, c);
            }
            segments.push(Segment {
                folded: (start, text.len()),
                original: (at, at + c.len_utf8()),
            });
        }
        Self { text, segments }
    }

    /// The original byte range of folded bytes `start..end`, when both ends fall on the
    /// edges of an original character's folded form (a match may not take half of one).
    fn original_range(&self, start: usize, end: usize) -> Option<Range<usize>> {
        let first = self.segments.partition_point(|s| s.folded.1 <= start);
        let first = self.segments.get(first)?;
        let last = self.segments.partition_point(|s| s.folded.1 < end);
        let last = self.segments.get(last)?;
        (first.folded.0 == start && last.folded.1 == end)
            .then_some(first.original.0..last.original.1)
    }
}

/// Appends the folded form of `c`.
fn push_folded(out: &mut String, c: char) {
    match c {
        'İ' => out.push('i'),
        _ => {
            for lower in c.to_lowercase() {
                out.push(if lower == 'ς' { 'σ' } else { lower });
            }
        }
    }
}

/// Whether `range` of `text` stands as a whole word: no word character touches it.
fn whole_word(text: &str, range: &Range<usize>) -> bool {
    let before = text[..range.start]
        .chars()
        .rev()
        .find(|&c| !is_invisible(c));
    let after = text[range.end..].chars().find(|&c| !is_invisible(c));
    !before.is_some_and(is_word_char) && !after.is_some_and(is_word_char)
}

/// Letters, digits, `_`, and combining marks (which belong to the letter before them).
fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || is_combining_mark(c)
}

/// The combining-mark blocks (diacritics written after their base letter).
fn is_combining_mark(c: char) -> bool {
    matches!(c,
        '\u{0300}'..='\u{036F}'
        | '\u{1AB0}'..='\u{1AFF}'
        | '\u{1DC0}'..='\u{1DFF}'
        | '\u{20D0}'..='\u{20FF}'
        | '\u{FE20}'..='\u{FE2F}')
}

/// Characters that show nothing and may be slipped inside a word to hide it.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}'              // soft hyphen
        | '\u{034F}'            // combining grapheme joiner
        | '\u{061C}'            // Arabic letter mark
        | '\u{180E}'            // Mongolian vowel separator
        | '\u{200B}'..='\u{200F}' // zero-width space, (non-)joiners, direction marks
        | '\u{202A}'..='\u{202E}' // direction embeddings and overrides
        | '\u{2060}'..='\u{2064}' // word joiner, invisible operators
        | '\u{2066}'..='\u{206F}' // direction isolates, deprecated format characters
        | '\u{FE00}'..='\u{FE0F}' // variation selectors
        | '\u{FEFF}') // zero-width no-break space
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn words(list: &[&str]) -> Words {
        Words::new(list).unwrap()
    }

    /// The matched substrings of `text`.
    fn hits<'t>(w: &Words, text: &'t str) -> Vec<&'t str> {
        w.matches(text)
            .into_iter()
            .map(|f| &text[f.range])
            .collect()
    }

    #[test]
    fn whole_words_only() {
        let w = words(&["ass"]);
        for clean in [
            "class",
            "assassin",
            "ass_hat",
            "ass1",
            "bass guitar",
            "_ass",
            "ás",
        ] {
            assert_eq!(w.find(clean), None, "{clean:?}");
        }
        for (text, hit) in [
            ("Ass!", "Ass"),
            ("what an ass.", "ass"),
            ("(ASS)", "ASS"),
            ("ass-hat", "ass"),
            ("¡aSs!", "aSs"),
            ("«ass»", "ass"),
            ("ass", "ass"),
            ("he said 'ass'", "ass"),
        ] {
            assert_eq!(hits(&w, text), [hit], "{text:?}");
        }
    }

    #[test]
    fn cyrillic_matches_in_any_case() {
        let w = words(&["Дурак"]);
        assert_eq!(hits(&w, "ты ДУРАК!"), ["ДУРАК"]);
        assert_eq!(hits(&w, "дурак"), ["дурак"]);
        assert_eq!(w.find("дураки"), None);
        assert_eq!(w.mask("ты ДУРАК!", "*"), "ты *****!");
    }

    #[test]
    fn german_sharp_s_lowercases_but_is_not_case_folded() {
        let w = words(&["straße"]);
        assert_eq!(hits(&w, "Die STRAẞE."), ["STRAẞE"]);
        assert_eq!(hits(&w, "Straße"), ["Straße"]);
        // Lowercasing does not turn SS into ß (documented).
        assert_eq!(w.find("STRASSE"), None);
        // ẞ is 3 bytes, ß 2: the mask covers the original characters.
        assert_eq!(w.mask("Die STRAẞE.", "#"), "Die ######.");
    }

    #[test]
    fn turkish_dotted_capital_i_matches_plain_i() {
        let w = words(&["istanbul"]);
        let text = "İyi günler, İSTANBUL!";
        assert_eq!(hits(&w, text), ["İSTANBUL"]);
        assert_eq!(w.mask(text, "*"), "İyi günler, ********!");
        let w = words(&["İstanbul"]);
        assert_eq!(hits(&w, "istanbul"), ["istanbul"]);
        // The dotless ı is another letter.
        assert_eq!(w.find("ıstanbul"), None);
    }

    #[test]
    fn folding_that_changes_byte_lengths_maps_back_to_the_original() {
        // K (Kelvin sign, 3 bytes) lowercases to k (1 byte); Ⱥ (2 bytes) to ⱥ (3 bytes).
        let w = words(&["kelvin", "ⱥb"]);
        let text = "ȺȺ \u{212A}elvin ȺB ok";
        assert_eq!(hits(&w, text), ["\u{212A}elvin", "ȺB"]);
        assert_eq!(w.mask(text, "*"), "ȺȺ ****** ** ok");
    }

    #[test]
    fn greek_final_sigma_matches_either_sigma() {
        let w = words(&["ΟΔΟΣ"]);
        assert_eq!(hits(&w, "η οδος"), ["οδος"]);
        assert_eq!(hits(&w, "η οδοσ"), ["οδοσ"]);
        assert_eq!(hits(&w, "Η ΟΔΟΣ!"), ["ΟΔΟΣ"]);
    }

    #[test]
    fn accents_count_and_combining_marks_belong_to_the_word() {
        let w = words(&["café"]);
        assert_eq!(hits(&w, "CAFÉ au lait"), ["CAFÉ"]);
        assert_eq!(w.find("cafés"), None);
        assert_eq!(w.find("cafe"), None);
        let w = words(&["cafe"]);
        // A decomposed é: the combining acute continues the word.
        assert_eq!(w.find("cafe\u{301}"), None);
        assert_eq!(
            w.find("cafe"),
            Some(Found {
                range: 0..4,
                word: "cafe"
            })
        );
    }

    #[test]
    fn emoji_and_punctuation_are_not_word_characters() {
        let w = words(&["ass"]);
        assert_eq!(hits(&w, "😀ass😀"), ["ass"]);
        assert_eq!(hits(&w, "ass👍🏽"), ["ass"]);
        assert_eq!(w.mask("😀ass😀", "*"), "😀***😀");
        assert_eq!(hits(&w, "ass,ass;ass"), ["ass", "ass", "ass"]);
    }

    #[test]
    fn phrases_span_any_whitespace_and_invisible_characters_do_not_hide_words() {
        let w = words(&["  bad   word "]);
        assert_eq!(hits(&w, "a Bad word!"), ["Bad word"]);
        assert_eq!(hits(&w, "a bad \n\t word"), ["bad \n\t word"]);
        assert_eq!(w.find("badword"), None);
        assert_eq!(w.mask("bad  word", "*"), "*********");
        let w = words(&["bad"]);
        assert_eq!(hits(&w, "so b\u{200B}a\u{00AD}d"), ["b\u{200B}a\u{00AD}d"]);
        assert_eq!(w.mask("b\u{200B}ad!", "*"), "****!");
        // Invisible characters are not boundaries either.
        assert_eq!(w.find("x\u{200B}bad"), None);
    }

    #[test]
    fn overlapping_words_leftmost_then_longest() {
        let w = words(&["bad", "bad word", "word"]);
        assert_eq!(hits(&w, "bad word"), ["bad word"]);
        assert_eq!(hits(&w, "bad words"), ["bad"]);
        assert_eq!(hits(&w, "so bad, word"), ["bad", "word"]);
        let w = words(&["ab c", "c d"]);
        assert_eq!(hits(&w, "ab c d"), ["ab c"]);
        assert_eq!(w.mask("ab c d", "*"), "**** d");
        // A longer word that is not whole does not hide a shorter one that is.
        let w = words(&["ab", "ab cd"]);
        assert_eq!(hits(&w, "ab cde"), ["ab"]);
        // A match rejected as part of a word does not hide a later one.
        let w = words(&["ab", "b c"]);
        assert_eq!(w.find("xab c"), None);
        assert_eq!(hits(&w, "xab ab"), ["ab"]);
    }

    #[test]
    fn scripts_without_spaces_match_only_at_non_letter_boundaries() {
        let w = words(&["中文"]);
        assert_eq!(w.find("我爱中文"), None);
        assert_eq!(hits(&w, "中文!"), ["中文"]);
        assert_eq!(hits(&w, "说 中文 吧"), ["中文"]);
        assert_eq!(hits(&w, "「中文」"), ["中文"]);
    }

    #[test]
    fn empty_and_blank_words_are_ignored() {
        let w = words(&["", "   ", "\u{200B}", "\n"]);
        assert!(w.is_empty());
        assert_eq!(w.find("anything at all"), None);
        assert_eq!(w.mask("  ", "*"), "  ");
        let w = words(&["", "x", "X", " x "]);
        assert_eq!(w.len(), 1);
        assert_eq!(hits(&w, "x"), ["x"]);
    }

    #[test]
    fn masks_of_any_length() {
        let w = words(&["no"]);
        assert_eq!(w.mask("No way, no!", "[x]"), "[x][x] way, [x][x]!");
        assert_eq!(w.mask("nothing", "*"), "nothing");
    }

    /// Every (start, end) on character boundaries whose substring folds to a listed word and
    /// stands as a whole word, then the leftmost-longest pick: a slow, obvious model.
    fn model(list: &[String], text: &str) -> Vec<Range<usize>> {
        let folded: Vec<String> = list.iter().map(|w| normalize(w)).collect();
        let bounds: Vec<usize> = text
            .char_indices()
            .map(|(i, _)| i)
            .chain([text.len()])
            .collect();
        let mut candidates = Vec::new();
        for (a, &start) in bounds.iter().enumerate() {
            for &end in &bounds[a + 1..] {
                let piece = &text[start..end];
                let first = piece.chars().next().unwrap();
                let last = piece.chars().next_back().unwrap();
                let edge_ok = |c: char| !c.is_whitespace() && !is_invisible(c);
                if !edge_ok(first) || !edge_ok(last) {
                    continue;
                }
                let n = normalize(piece);
                if !n.is_empty() && folded.contains(&n) && whole_word(text, &(start..end)) {
                    candidates.push(start..end);
                }
            }
        }
        candidates.sort_by(|a, b| a.start.cmp(&b.start).then(b.end.cmp(&a.end)));
        let mut picked: Vec<Range<usize>> = Vec::new();
        for c in candidates {
            if picked.last().is_none_or(|l| c.start >= l.end) {
                picked.push(c);
            }
        }
        picked
    }

    #[test]
    fn random_texts_match_the_model_and_masking_keeps_the_rest() {
        const ALPHABET: &[char] = &[
            'a', 'b', 'A', 'B', ' ', ' ', '\n', '.', '_', '1', 'İ', 'i', 'I', 'ı', 'ß', 'ẞ',
            '\u{212A}', 'k', 'Σ', 'ς', 'σ', '\u{301}', '\u{200B}', '😀', 'д', 'Д', '中', 'Ⱥ', 'ⱥ',
        ];
        let mut rng = StdRng::seed_from_u64(0x5eed_c4a7);
        let pick = |rng: &mut StdRng, max: usize| -> String {
            let n = rng.random_range(0..=max);
            (0..n)
                .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())])
                .collect()
        };
        let mut rounds_with_matches = 0;
        for round in 0..3000 {
            let list: Vec<String> = (0..rng.random_range(0..5))
                .map(|_| pick(&mut rng, 3))
                .collect();
            // Pieces of random characters and of listed words (in upper case at times), so
            // that matches, near misses and neighbours are all common.
            let mut text = String::new();
            for _ in 0..rng.random_range(0..5) {
                match list.get(rng.random_range(0..list.len() + 2)) {
                    Some(word) if rng.random_bool(0.5) => text.push_str(&word.to_uppercase()),
                    Some(word) => text.push_str(word),
                    None => text.push_str(&pick(&mut rng, 3)),
                }
            }
            let w = Words::new(&list).unwrap();
            let found = w.matches(&text);
            let ranges: Vec<Range<usize>> = found.iter().map(|f| f.range.clone()).collect();
            rounds_with_matches += usize::from(!ranges.is_empty());
            assert_eq!(
                ranges,
                model(&list, &text),
                "round {round}: words {list:?} in {text:?}"
            );
            for f in &found {
                assert_eq!(normalize(&text[f.range.clone()]), f.word, "round {round}");
            }
            assert_eq!(w.find(&text), found.first().cloned(), "round {round}");
            let masked = w.mask(&text, "*");
            let mut rebuilt = String::new();
            let mut at = 0;
            for r in &ranges {
                rebuilt.push_str(&text[at..r.start]);
                rebuilt.push_str(&"*".repeat(text[r.clone()].chars().count()));
                at = r.end;
            }
            rebuilt.push_str(&text[at..]);
            assert_eq!(masked, rebuilt, "round {round}: words {list:?} in {text:?}");
        }
        // The alphabet is small enough that matches are common, so the model is exercised.
        assert!(rounds_with_matches > 300, "{rounds_with_matches}");
    }

    #[test]
    fn arbitrary_unicode_never_panics() {
        let mut rng = StdRng::seed_from_u64(7);
        let any = |rng: &mut StdRng, max: usize| -> String {
            let n = rng.random_range(0..=max);
            (0..n)
                .filter_map(|_| char::from_u32(rng.random_range(0..0x11_0000)))
                .collect()
        };
        for _ in 0..500 {
            let list: Vec<String> = (0..4).map(|_| any(&mut rng, 4)).collect();
            let text = any(&mut rng, 40);
            let w = Words::new(&list).unwrap();
            let masked = w.mask(&text, "*");
            if w.find(&text).is_none() {
                assert_eq!(masked, text);
            }
        }
    }
}
