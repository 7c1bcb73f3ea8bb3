//! The query strings of the GET endpoints (the admin API's, the public user list): a few
//! integer parameters, checked strictly so that a typo (`?limt=5`) or a bad value
//! (`?limit=-1`) is a 400 that names the parameter instead of a silently different answer.

/// A query string that cannot be used; each endpoint answers it with 400 `bad_request`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadQuery(pub String);

/// An integer query parameter: its name and the values it may take.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    pub name: &'static str,
    pub min: u64,
    pub max: u64,
}

impl Param {
    /// Any non-negative integer (an id, an offset).
    pub const fn any(name: &'static str) -> Self {
        Self {
            name,
            min: 0,
            max: u64::MAX,
        }
    }

    /// `limit`, a page size from 1 to `max`.
    pub const fn limit(max: u64) -> Self {
        Self {
            name: "limit",
            min: 1,
            max,
        }
    }
}

/// The query string as name/value pairs (percent-decoded), in order.
pub type Pairs = Vec<(String, String)>;

/// Decodes a raw query string (`None`: no query at all).
pub fn pairs(query: Option<&str>) -> Result<Pairs, BadQuery> {
    let Some(query) = query else {
        return Ok(Vec::new());
    };
    serde_urlencoded::from_str(query)
        .map_err(|e| BadQuery(format!("cannot read the query string: {e}")))
}

/// Reads the parameters `params` from `pairs`: `None` for those absent. Unknown or repeated
/// parameters, and values that are not integers in range, are refused.
pub fn integers(pairs: &Pairs, params: &[Param]) -> Result<Vec<Option<u64>>, BadQuery> {
    let names = || {
        params
            .iter()
            .map(|p| format!("{:?}", p.name))
            .collect::<Vec<_>>()
            .join(" and ")
    };
    let mut values = vec![None; params.len()];
    for (name, value) in pairs {
        let Some(index) = params.iter().position(|p| p.name == name) else {
            let takes = if params.is_empty() {
                "no query parameters".to_owned()
            } else {
                names()
            };
            return Err(BadQuery(format!(
                "unknown query parameter {name:?}; this endpoint takes {takes}"
            )));
        };
        if values[index].is_some() {
            return Err(BadQuery(format!(
                "the query parameter {name:?} is given more than once"
            )));
        }
        let param = params[index];
        let out_of_range = || {
            BadQuery(format!(
                "the query parameter {:?} must be an integer from {} to {}, not {value:?}",
                param.name, param.min, param.max
            ))
        };
        // Plain decimal digits only: no sign, no spaces, no exponent.
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(out_of_range());
        }
        let number: u64 = value.parse().map_err(|_| out_of_range())?;
        if number < param.min || number > param.max {
            return Err(out_of_range());
        }
        values[index] = Some(number);
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARAMS: [Param; 2] = [Param::any("skip"), Param::limit(1000)];

    fn read(query: Option<&str>) -> Result<Vec<Option<u64>>, String> {
        pairs(query)
            .and_then(|p| integers(&p, &PARAMS))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn absent_parameters_are_none() {
        assert_eq!(read(None), Ok(vec![None, None]));
        assert_eq!(read(Some("")), Ok(vec![None, None]));
        assert_eq!(read(Some("limit=5")), Ok(vec![None, Some(5)]));
        assert_eq!(
            read(Some("limit=1000&skip=0")),
            Ok(vec![Some(0), Some(1000)])
        );
        assert_eq!(read(Some("limit=%35")), Ok(vec![None, Some(5)]));
        assert_eq!(
            read(Some("skip=18446744073709551615")),
            Ok(vec![Some(u64::MAX), None])
        );
    }

    #[test]
    fn bad_values_name_the_parameter_and_the_range() {
        for (query, name) in [
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("limit=-1", "limit"),
            ("limit=abc", "limit"),
            ("limit=", "limit"),
            ("limit=1.5", "limit"),
            ("limit=+3", "limit"),
            ("limit=%203", "limit"),
            ("skip=-4", "skip"),
            ("skip=18446744073709551616", "skip"),
        ] {
            let err = read(Some(query)).unwrap_err();
            assert!(
                err.contains(&format!("{name:?}")) && err.contains("integer from"),
                "{query}: {err}"
            );
        }
        let err = read(Some("limit=5&limit=6")).unwrap_err();
        assert!(err.contains("more than once"), "{err}");
        let err = integers(&pairs(Some("channel=x")).unwrap(), &[]).unwrap_err();
        assert!(
            err.to_string().contains("takes no query parameters"),
            "{err}"
        );
        let err = read(Some("limt=5")).unwrap_err();
        assert!(
            err.contains("\"limt\"") && err.contains("\"skip\" and \"limit\""),
            "{err}"
        );
    }
}
