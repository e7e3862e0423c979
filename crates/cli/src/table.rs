//! Plain-text tables for list commands.

use serde_json::Value;

/// Left-aligned columns separated by two spaces; the last column is not padded.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let last = row.len().saturating_sub(1);
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i < last {
                let pad = widths.get(i).copied().unwrap_or(0) - cell.chars().count();
                line.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn text(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => "-".to_string(),
    }
}

/// `1.0` → `1`, `0.5` → `0.5`.
fn number(v: Option<&Value>) -> Option<String> {
    let f = v?.as_f64()?;
    Some(if f.fract() == 0.0 && f.abs() < 1e15 {
        format!("{}", f as i64)
    } else {
        format!("{f}")
    })
}

/// `2026-11-22T16:15:42.821Z` → `2026-11-22 16:15:42`.
fn timestamp(v: &Value) -> String {
    let t = v.get("created_at").and_then(Value::as_str).unwrap_or("");
    if t.is_empty() {
        return "-".into();
    }
    let t = t.replacen('T', " ", 1);
    let end = t.find(['.', 'Z', '+']).unwrap_or(t.len());
    t[..end].to_string()
}

/// The `sbx ls` table.
pub fn sandboxes(items: &[Value]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|sb| {
            let res = sb.get("resources");
            let field = |k: &str| res.and_then(|r| r.get(k));
            let template = match text(sb, "sandbox_template_id").as_str() {
                "-" => text(sb, "image"),
                t => t.to_string(),
            };
            vec![
                text(sb, "id"),
                text(sb, "name"),
                text(sb, "phase"),
                template,
                number(field("cpu")).unwrap_or_else(|| "-".into()),
                number(field("memory_gb")).map_or_else(|| "-".into(), |m| format!("{m}G")),
                timestamp(sb),
            ]
        })
        .collect();
    render(
        &["ID", "NAME", "PHASE", "TEMPLATE", "CPU", "MEM", "CREATED"],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn render_aligns_columns() {
        let rows = vec![
            vec!["a".to_string(), "long-value".to_string(), "x".to_string()],
            vec!["bbbb".to_string(), "".to_string(), "".to_string()],
        ];
        assert_eq!(
            render(&["A", "B", "C"], &rows),
            "A     B           C\na     long-value  x\nbbbb\n"
        );
    }

    #[test]
    fn empty_list_is_just_the_header() {
        assert_eq!(
            sandboxes(&[]),
            "ID  NAME  PHASE  TEMPLATE  CPU  MEM  CREATED\n"
        );
    }

    #[test]
    fn sandbox_rows() {
        let items = [
            json!({"id":"c0c9aa05","name":"t1","phase":"Ready","sandbox_template_id":"sb-busybox",
                   "resources":{"cpu":1.0,"memory_gb":1,"disk_gb":10},
                   "created_at":"2026-11-22T16:15:42.821Z"}),
            json!({"id":"916e7b1e","name":"web","phase":"Pending","sandbox_template_id":null,
                   "image":"docker.io/library/busybox:latest",
                   "resources":{"cpu":0.5,"memory_gb":2},"created_at":"2026-11-22T16:16:15Z"}),
            json!({"id":"x"}),
        ];
        let out = sandboxes(&items);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(
            lines[1],
            "c0c9aa05  t1    Ready    sb-busybox                        1    1G   2026-11-22 16:15:42"
        );
        assert_eq!(
            lines[2],
            "916e7b1e  web   Pending  docker.io/library/busybox:latest  0.5  2G   2026-11-22 16:16:15"
        );
        assert_eq!(
            lines[3],
            "x         -     -        -                                 -    -    -"
        );
    }
}
