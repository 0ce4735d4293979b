//! Styles the sketch composer knows, and how a prompt's words and metadata select them.

/// The composer's styles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Style {
    House,
    Techno,
    Ambient,
    HipHop,
    Funk,
    DrumAndBass,
}

/// Number of styles.
pub const STYLE_COUNT: usize = 6;

impl Style {
    pub const ALL: [Style; STYLE_COUNT] = [
        Style::House,
        Style::Techno,
        Style::Ambient,
        Style::HipHop,
        Style::Funk,
        Style::DrumAndBass,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn from_index(i: usize) -> Option<Style> {
        Self::ALL.get(i).copied()
    }

    pub fn name(self) -> &'static str {
        match self {
            Style::House => "house",
            Style::Techno => "techno",
            Style::Ambient => "ambient",
            Style::HipHop => "hip hop",
            Style::Funk => "funk",
            Style::DrumAndBass => "drum and bass",
        }
    }

    /// Tempo used when the prompt gives none.
    pub fn default_bpm(self) -> f32 {
        match self {
            Style::House => 124.0,
            Style::Techno => 132.0,
            Style::Ambient => 80.0,
            Style::HipHop => 90.0,
            Style::Funk => 108.0,
            Style::DrumAndBass => 174.0,
        }
    }

    /// Default mode when the prompt names no key: true = minor.
    pub fn default_minor(self) -> bool {
        !matches!(self, Style::Funk)
    }

    /// Words that select this style (lower case; matched as whole words or phrases).
    fn keywords(self) -> &'static [&'static str] {
        match self {
            Style::House => &[
                "house",
                "deep house",
                "garage",
                "disco house",
                "edm",
                "dance",
                "club",
            ],
            Style::Techno => &[
                "techno",
                "minimal",
                "acid",
                "industrial",
                "trance",
                "rave",
                "warehouse",
            ],
            Style::Ambient => &[
                "ambient",
                "drone",
                "chill",
                "chillout",
                "cinematic",
                "atmospheric",
                "downtempo",
                "new age",
                "meditation",
                "pad",
                "pads",
            ],
            Style::HipHop => &[
                "hip hop", "hip-hop", "hiphop", "rap", "boom bap", "lofi", "lo-fi", "trap", "beats",
            ],
            Style::Funk => &[
                "funk",
                "funky",
                "disco",
                "soul",
                "groove",
                "r&b",
                "rnb",
                "jazz funk",
                "jazz",
            ],
            Style::DrumAndBass => &[
                "drum and bass",
                "drum & bass",
                "drum n bass",
                "dnb",
                "d&b",
                "jungle",
                "liquid",
                "breakbeat",
                "breaks",
            ],
        }
    }
}

/// What a prompt's text says, as the sketch understands it.
#[derive(Clone, Debug, PartialEq)]
pub struct PromptReading {
    /// Probability of each style (sums to 1).
    pub style_weights: [f32; STYLE_COUNT],
    /// True when no style word was recognised (weights are uniform).
    pub unrecognised: bool,
    /// −1 dark … +1 bright.
    pub brightness: f32,
    /// −1 calm … +1 energetic.
    pub energy: f32,
    pub bpm: Option<f32>,
    /// (tonic pitch class, minor).
    pub key: Option<(u8, bool)>,
    /// Words no reading used, in the order they came (each once).
    pub unknown_words: Vec<String>,
}

/// Read style words, mood words, "NNN bpm" and key names from free text.
pub fn read_prompt(text: &str) -> PromptReading {
    let lower = format!(
        " {} ",
        text.to_lowercase()
            .replace([',', ';', '.', '/', '(', ')', '|'], " ")
    );
    let mut hits = [0f32; STYLE_COUNT];
    for s in Style::ALL {
        for kw in s.keywords() {
            if lower.contains(&format!(" {kw} ")) {
                hits[s.index()] += 1.0;
            }
        }
    }
    let total: f32 = hits.iter().sum();
    let unrecognised = total == 0.0;
    let style_weights = if unrecognised {
        [1.0 / STYLE_COUNT as f32; STYLE_COUNT]
    } else {
        hits.map(|h| h / total)
    };
    let score = |words: &[&str]| {
        words
            .iter()
            .filter(|w| lower.contains(&format!(" {w} ")))
            .count() as f32
    };
    let brightness = (score(BRIGHT_WORDS) - score(DARK_WORDS)).clamp(-1.0, 1.0);
    let energy = (score(ENERGETIC_WORDS) - score(CALM_WORDS)).clamp(-1.0, 1.0);
    PromptReading {
        style_weights,
        unrecognised,
        brightness,
        energy,
        bpm: find_bpm(&lower),
        key: find_key(text),
        unknown_words: unknown_words(&lower),
    }
}

const BRIGHT_WORDS: &[&str] = &[
    "bright",
    "shiny",
    "crisp",
    "airy",
    "sparkling",
    "happy",
    "uplifting",
    "euphoric",
];
const DARK_WORDS: &[&str] = &[
    "dark",
    "warm",
    "deep",
    "moody",
    "muffled",
    "murky",
    "sad",
    "melancholic",
    "gloomy",
];
const ENERGETIC_WORDS: &[&str] = &[
    "energetic",
    "hard",
    "driving",
    "aggressive",
    "intense",
    "fast",
    "peak",
    "banging",
    "heavy",
];
const CALM_WORDS: &[&str] = &[
    "calm", "soft", "gentle", "mellow", "relaxed", "slow", "sparse", "quiet", "dreamy",
];
/// Words that say nothing by themselves ("deep house with pads", "in A minor").
const FILLER_WORDS: &[&str] = &[
    "a", "an", "the", "with", "and", "of", "in", "on", "for", "some", "very", "key", "&", "n", "-",
    "major", "minor", "maj", "min",
];

/// The words of `lower` (lower case, punctuation spaced) that no style, mood, tempo or key
/// reading used: what a prompt asked for that the sketch cannot play.
fn unknown_words(lower: &str) -> Vec<String> {
    let known = |w: &str| {
        Style::ALL
            .iter()
            .flat_map(|s| s.keywords().iter())
            .chain(
                [
                    BRIGHT_WORDS,
                    DARK_WORDS,
                    ENERGETIC_WORDS,
                    CALM_WORDS,
                    FILLER_WORDS,
                ]
                .concat()
                .iter(),
            )
            .any(|k| k.split(' ').any(|kw| kw == w))
            || w.trim_end_matches("bpm").parse::<f32>().is_ok()
            || w == "bpm"
            || parse_key(w).is_some()
    };
    let mut out: Vec<String> = Vec::new();
    for w in lower.split_whitespace() {
        if !known(w) && !out.iter().any(|o| o == w) {
            out.push(w.to_string());
        }
    }
    out
}

fn find_bpm(lower: &str) -> Option<f32> {
    let words: Vec<&str> = lower.split_whitespace().collect();
    for (i, w) in words.iter().enumerate() {
        if let Some(num) = w.strip_suffix("bpm") {
            let num = if num.is_empty() {
                i.checked_sub(1).map(|j| words[j]).unwrap_or("")
            } else {
                num
            };
            if let Ok(v) = num.parse::<f32>()
                && (40.0..=300.0).contains(&v)
            {
                return Some(v);
            }
        }
    }
    None
}

/// Parse a key such as "A minor", "F# major", "Bbm", "C" (major). Returns (tonic pc, minor).
pub fn parse_key(text: &str) -> Option<(u8, bool)> {
    let t = text.trim();
    let mut chars = t.chars();
    let letter = chars.next()?.to_ascii_uppercase();
    let base: i32 = match letter {
        'C' => 0,
        'D' => 2,
        'E' => 4,
        'F' => 5,
        'G' => 7,
        'A' => 9,
        'B' => 11,
        _ => return None,
    };
    let rest: String = chars.collect();
    let (acc, rest) = if let Some(r) = rest.strip_prefix('#').or_else(|| rest.strip_prefix('♯')) {
        (1, r)
    } else if let Some(r) = rest.strip_prefix('b').or_else(|| rest.strip_prefix('♭')) {
        (-1, r)
    } else {
        (0, rest.as_str())
    };
    let rest = rest.trim().to_lowercase();
    let minor = match rest.as_str() {
        "" | "maj" | "major" => false,
        "m" | "min" | "minor" => true,
        _ => return None,
    };
    Some(((base + acc).rem_euclid(12) as u8, minor))
}

fn find_key(text: &str) -> Option<(u8, bool)> {
    let words: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|w| !w.is_empty())
        .collect();
    for (i, w) in words.iter().enumerate() {
        if let Some(next) = words.get(i + 1) {
            let n = next.to_lowercase();
            if (n == "minor" || n == "major" || n == "min" || n == "maj")
                && let Some(k) = parse_key(&format!("{w} {n}"))
            {
                return Some(k);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_styles_moods_tempo_and_key() {
        let r = read_prompt("Deep house, warm pads, 122 BPM, A minor");
        assert!(r.style_weights[Style::House.index()] > 0.4);
        assert!(
            r.style_weights[Style::Ambient.index()] > 0.0,
            "'pads' is an ambient word"
        );
        assert_eq!(r.bpm, Some(122.0));
        assert_eq!(r.key, Some((9, true)));
        assert!(r.brightness < 0.0);
        let r = read_prompt("something unheard of");
        assert!(r.unrecognised);
        assert_eq!(r.unknown_words, ["something", "unheard"]);
        let r = read_prompt("jazz piano trio, 96 bpm, F# minor");
        assert!(!r.unrecognised, "jazz is a funk word");
        assert_eq!(r.unknown_words, ["piano", "trio"]);
        assert!(
            read_prompt("Deep house, warm pads, 122 BPM, A minor")
                .unknown_words
                .is_empty()
        );
        assert!((r.style_weights.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(read_prompt("dnb at 174bpm").bpm, Some(174.0));
        assert_eq!(
            read_prompt("drum and bass").style_weights[Style::DrumAndBass.index()],
            1.0
        );
    }

    #[test]
    fn parses_keys() {
        assert_eq!(parse_key("F# major"), Some((6, false)));
        assert_eq!(parse_key("Bbm"), Some((10, true)));
        assert_eq!(parse_key("c"), Some((0, false)));
        assert_eq!(parse_key("H major"), None);
        assert_eq!(parse_key("C lydian"), None);
    }
}
