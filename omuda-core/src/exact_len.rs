//! Fixed-length number lists of a configuration (`crop = [512, 512]`), read
//! so that a list of another length is an error: serde's arrays take the
//! first N numbers of a longer list and drop the rest without a word.
//! Used with `#[serde(deserialize_with = "crate::exact_len::array")]`.

use serde::{Deserialize, Deserializer};

fn exact<E: serde::de::Error, const N: usize>(v: Vec<usize>) -> Result<[usize; N], E> {
    let n = v.len();
    v.try_into()
        .map_err(|_| E::custom(format!("expected a list of exactly {N} numbers, got {n}")))
}

/// `[usize; N]` from a list of exactly N numbers.
pub fn array<'de, D: Deserializer<'de>, const N: usize>(d: D) -> Result<[usize; N], D::Error> {
    exact(Vec::<usize>::deserialize(d)?)
}

/// `Option<[usize; N]>` from a list of exactly N numbers.
pub fn option_array<'de, D: Deserializer<'de>, const N: usize>(
    d: D,
) -> Result<Option<[usize; N]>, D::Error> {
    match Option::<Vec<usize>>::deserialize(d)? {
        Some(v) => exact(v).map(Some),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    #[derive(serde::Deserialize, Debug)]
    struct T {
        #[serde(deserialize_with = "super::array")]
        crop: [usize; 2],
        #[serde(default, deserialize_with = "super::option_array")]
        margins: Option<[usize; 4]>,
    }

    #[test]
    fn lists_of_another_length_are_refused() {
        let ok: T = toml::from_str("crop = [64, 32]\nmargins = [1, 2, 3, 4]\n").unwrap();
        assert_eq!(ok.crop, [64, 32]);
        assert_eq!(ok.margins, Some([1, 2, 3, 4]));
        let none: T = toml::from_str("crop = [8, 8]\n").unwrap();
        assert_eq!(none.margins, None);
        let e = toml::from_str::<T>("crop = [64, 64, 3]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("crop") && e.contains("exactly 2 numbers, got 3"),
            "{e}"
        );
        let e = toml::from_str::<T>("crop = [1, 1]\nmargins = [1]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("margins") && e.contains("exactly 4 numbers, got 1"),
            "{e}"
        );
    }
}
