//! `FieldIndex`: where each of a page's records has its top-level fields, as the source
//! found them while reading the page, so a destination reads a record's key and version
//! without scanning the record again.

use std::ops::Range;

/// The top-level fields of each of a page's records: byte ranges of the record's text, a
/// field's name (between its quotes) and its value. A record may be left out (not an object,
/// a name with escapes): its reader scans it. A hint only: a reader checks each range
/// against the record's text, and a wrong one only costs that scan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldIndex {
    /// Record `i`'s fields are `fields[records[i].0..records[i].1]`; `(u32::MAX, _)`: left
    /// out.
    records: Vec<(u32, u32)>,
    /// Name start, name end, value start, value end.
    fields: Vec<[u32; 4]>,
}

const LEFT_OUT: u32 = u32::MAX;

impl FieldIndex {
    /// An empty index with room for `records` records of about `fields` fields each.
    pub fn with_capacity(records: usize, fields: usize) -> Self {
        FieldIndex {
            records: Vec::with_capacity(records),
            fields: Vec::with_capacity(records * fields),
        }
    }

    /// Adds the next record, whose fields are `fields` (name and value ranges of its text);
    /// `None` leaves it out. A range beyond `u32` leaves the record out.
    pub fn push(&mut self, fields: Option<&[(Range<usize>, Range<usize>)]>) {
        let start = self.fields.len();
        let converted = fields.and_then(|fields| {
            fields.iter().try_for_each(|(name, value)| {
                let field = [name.start, name.end, value.start, value.end].map(u32::try_from);
                let [Ok(a), Ok(b), Ok(c), Ok(d)] = field else {
                    return None;
                };
                self.fields.push([a, b, c, d]);
                Some(())
            })
        });
        match (
            converted,
            u32::try_from(start),
            u32::try_from(self.fields.len()),
        ) {
            (Some(()), Ok(start), Ok(end)) => self.records.push((start, end)),
            _ => {
                self.fields.truncate(start);
                self.records.push((LEFT_OUT, 0));
            }
        }
    }

    /// The number of records indexed (or left out).
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no record is in it.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Record `i`'s fields (name and value ranges of its text); `None` when it was left out
    /// or is not in the index.
    pub fn record(
        &self,
        i: usize,
    ) -> Option<impl Iterator<Item = (Range<usize>, Range<usize>)> + '_> {
        let &(start, end) = self.records.get(i).filter(|(s, _)| *s != LEFT_OUT)?;
        let fields = self.fields.get(start as usize..end as usize)?;
        Some(fields.iter().map(|&[a, b, c, d]| {
            let at = |x: u32| x as usize;
            (at(a)..at(b), at(c)..at(d))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_each_records_fields_and_leaves_some_out() {
        let mut index = FieldIndex::with_capacity(3, 2);
        index.push(Some(&[(2..4, 6..7), (9..10, 12..14)]));
        index.push(None);
        index.push(Some(&[]));
        index.push(Some(&[(0..1, usize::MAX - 1..usize::MAX)]));
        assert_eq!(index.len(), 4);
        let fields = |i| index.record(i).map(Iterator::collect::<Vec<_>>);
        assert_eq!(fields(0), Some(vec![(2..4, 6..7), (9..10, 12..14)]));
        assert_eq!(fields(1), None);
        assert_eq!(fields(2), Some(vec![]));
        assert_eq!(fields(3), None, "beyond u32: left out");
        assert_eq!(fields(4), None);
    }
}
