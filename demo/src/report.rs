//! Prints the rows of the worker's three databases as aligned tables.

use crate::saga_log::{SharedOutput, print_line};
use crate::store::Store;

/// Prints every row of `users.db`, `permissions.db` and `quotas.db`.
///
/// # Errors
///
/// When a database cannot be read.
pub async fn print_databases(store: &Store, output: &SharedOutput) -> anyhow::Result<()> {
    let users = store.list_users().await?;
    let rows = users
        .into_iter()
        .map(|user| {
            vec![
                user.user_id.to_string(),
                user.username,
                user.email,
                user.saga_id,
                user.created_at,
            ]
        })
        .collect();
    print_table(
        output,
        "users.db",
        &["user_id", "username", "email", "saga_id", "created_at"],
        rows,
    );

    let permissions = store.list_permissions().await?;
    let rows = permissions
        .into_iter()
        .map(|permission| {
            vec![
                permission.username,
                permission.role,
                permission.saga_id,
                permission.granted_at,
            ]
        })
        .collect();
    print_table(
        output,
        "permissions.db",
        &["username", "role", "saga_id", "granted_at"],
        rows,
    );

    let quotas = store.list_quotas().await?;
    let rows = quotas
        .into_iter()
        .map(|quota| {
            vec![
                quota.quota_id.to_string(),
                quota.username,
                quota.storage_mb.to_string(),
                quota.ops_per_day.to_string(),
                quota.saga_id,
                quota.created_at,
            ]
        })
        .collect();
    print_table(
        output,
        "quotas.db",
        &[
            "quota_id",
            "username",
            "storage_mb",
            "ops_per_day",
            "saga_id",
            "created_at",
        ],
        rows,
    );

    Ok(())
}

/// Prints a title line, then the table indented by two spaces, or a note
/// that it has no rows.
fn print_table(output: &SharedOutput, title: &str, headers: &[&str], rows: Vec<Vec<String>>) {
    if rows.is_empty() {
        print_line(output, format_args!("{title}: no rows"));
        return;
    }

    let count = rows.len();
    let noun = if count == 1 { "row" } else { "rows" };
    print_line(output, format_args!("{title}: {count} {noun}"));
    for line in format_table(headers, &rows) {
        print_line(output, format_args!("  {line}"));
    }
}

/// Aligns `rows` under `headers` in columns two spaces apart, without
/// trailing spaces.
fn format_table(headers: &[&str], rows: &[Vec<String>]) -> Vec<String> {
    let mut widths: Vec<usize> = headers
        .iter()
        .map(|header| header.chars().count())
        .collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }

    let header_cells: Vec<String> = headers.iter().map(|header| (*header).to_owned()).collect();
    std::iter::once(&header_cells)
        .chain(rows)
        .map(|cells| {
            let padded: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect();
            padded.join("  ").trim_end().to_owned()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_columns_align_to_widest_cell() {
        let rows = vec![
            vec!["1".to_owned(), "ana.garcia".to_owned()],
            vec!["22".to_owned(), "bo".to_owned()],
        ];

        let lines = format_table(&["id", "username"], &rows);

        assert_eq!(lines, ["id  username", "1   ana.garcia", "22  bo"]);
    }
}
