//! The weekly KPI report: PDF, email through a real SMTP server, archive
//! to a real S3 server, failure notices.

use std::path::Path;
use std::process::Command;

use crate::harness::{Project, create_bucket, messages_to, service};

fn sha256_file(p: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(p).unwrap()))
}

/// Reads an object from the test S3 server with boto3, a client
/// independent of sluice's (moto refuses unsigned reads).
fn s3_get(bucket: &str, key: &str) -> Vec<u8> {
    let endpoint = service("SLUICE_TEST_S3_ENDPOINT");
    let python = service("SLUICE_TEST_PYTHON");
    let script = "import boto3, sys; c = boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1', aws_access_key_id='k', aws_secret_access_key='s'); sys.stdout.buffer.write(c.get_object(Bucket=sys.argv[2], Key=sys.argv[3])['Body'].read())";
    let out = Command::new(python).args(["-c", script, &endpoint, bucket, key]).output().unwrap();
    assert!(out.status.success(), "boto3 GET {bucket}/{key}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

pub fn pdftotext(pdf: &Path) -> String {
    let out = Command::new("pdftotext").args(["-layout"]).arg(pdf).arg("-").output().expect("poppler-utils is installed");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn thousands(n: i64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The plain-text body of a message file, decoded by Python's email module.
pub fn decoded_text(eml: &str) -> String {
    let script = "import email, email.policy, sys; m = email.message_from_string(sys.stdin.read(), policy=email.policy.default); b = m.get_body(preferencelist=('plain',)); print(b.get_content() if b else '')";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), eml.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Two weeks of shop data loaded through the real ETL, and the customers
/// graded at the end of each day (the demo's daily grade ticks).
pub fn shop_with_two_weeks(p: &mut Project) {
    p.own_database();
    p.copy_shipped();
    p.sluice(&["generate", "--start", "2024-11-11", "--days", "14", "--users", "700", "--products", "500", "--seed", "5"]).ok();
    p.sluice(&["backfill", "ecommerce_etl", "--from", "2024-11-11", "--to", "2024-11-24"]).ok();
    for day in 11..=24 {
        p.sluice(&["run", "grade_update", "--logical-date", &format!("2024-11-{day}T23:50:00+09:00")]).ok();
    }
}

sluice_test!(the_weekly_report_is_rendered_archived_and_mailed, |p| {
    shop_with_two_weeks(&mut p);
    let smtp = service("SLUICE_TEST_SMTP_PORT");
    let endpoint = service("SLUICE_TEST_S3_ENDPOINT");
    let bucket = p.schema.replace('_', "-").to_lowercase();
    create_bucket(&bucket);
    let to = format!("kpi-{}@shop.test", p.schema.replace('_', "-"));
    p.set_env("SLUICE_CONN_MAILER", &format!("smtp://127.0.0.1:{smtp}?tls=none&from=reports@shop.test"));
    p.set_env("SLUICE_VAR_REPORT_SMTP", "mailer");
    p.set_env("SLUICE_VAR_REPORT_TO", &to);
    p.set_env("SLUICE_VAR_REPORT_ARCHIVE", &format!("s3://{bucket}"));
    p.set_env("SLUICE_CONN_ARCHIVE", &format!("s3://k:s@{}?tls=false", endpoint.trim_start_matches("http://")));

    let out = p.sluice(&["run", "weekly_report", "--date", "2024-11-18"]).ok();
    assert!(out.stdout.contains("weekly_report: 3 success"), "{}", out.all());

    // The PDF: A4 pages, every one renders, Korean headings, and headline
    // numbers computed here from the warehouse.
    let pdf = p.path().join("reports/out/weekly_kpi_2024-W47.pdf");
    let info = String::from_utf8(Command::new("pdfinfo").arg(&pdf).output().unwrap().stdout).unwrap();
    assert!(info.contains("Page size:       595.276 x 841.89 pts (A4)"), "{info}");
    let pages: usize = info.lines().find(|l| l.starts_with("Pages:")).unwrap().split_whitespace().last().unwrap().parse().unwrap();
    assert!((3..=6).contains(&pages), "{pages} pages");
    // Fit to mail: the fonts are subset to the glyphs drawn (the whole
    // Korean font would be 5 MB).
    let size = std::fs::metadata(&pdf).unwrap().len();
    assert!(size < 500_000, "the PDF is {size} bytes");
    // Both faces embedded, as subsets (named `ABCDEF+...`), with a Unicode map.
    let fonts = String::from_utf8(Command::new("pdffonts").arg(&pdf).output().unwrap().stdout).unwrap();
    let faces: Vec<&str> = fonts.lines().skip(2).collect();
    assert_eq!(faces.len(), 2, "{fonts}");
    for face in faces {
        let f: Vec<&str> = face.split_whitespace().collect();
        assert!(f[0].contains("+NanumGothic") && f[f.len() - 5..f.len() - 2] == ["yes", "yes", "yes"], "{fonts}");
    }
    let png = p.path().join("pages");
    let status = Command::new("pdftoppm").args(["-r", "30", "-png"]).arg(&pdf).arg(&png).status().unwrap();
    assert!(status.success());
    let rendered =
        std::fs::read_dir(p.path()).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("pages")).count();
    assert_eq!(rendered, pages);
    let text = pdftotext(&pdf);
    for heading in [
        "주간 KPI 리포트",
        "일별 매출",
        "카테고리별 매출과 비중",
        "요일·시간대별 결제 주문",
        "고객 등급 분포",
        "RFM 세그먼트",
        "매출 상위 10개 상품",
        "신상품",
        "구매 전환 퍼널",
        "가입 주차별 구매 고객 비율",
        "고객 생애 가치 (CLV)",
        "데이터 품질",
        "파이프라인 상태",
        "2024-11-18 (월) ~ 2024-11-24 (일)",
    ] {
        assert!(text.contains(heading), "the PDF lacks {heading:?}");
    }
    // Every page is numbered "n / N".
    let compact = text.replace(' ', "");
    assert!(compact.contains(&format!("1/{pages}")) && compact.contains(&format!("{pages}/{pages}")), "page numbers");
    let week = "ordered_at >= '2024-11-18' AND ordered_at < '2024-11-25'";
    let revenue: i64 = p.sql(&format!("SELECT sum(total_amount) FROM shop.orders WHERE status = 'paid' AND {week}"))[0].parse().unwrap();
    let orders: i64 = p.sql(&format!("SELECT count(*) FROM shop.orders WHERE status = 'paid' AND {week}"))[0].parse().unwrap();
    let buyers: i64 =
        p.sql(&format!("SELECT count(DISTINCT user_id) FROM shop.orders WHERE status = 'paid' AND {week}"))[0].parse().unwrap();
    assert!(revenue > 0 && orders > 0);
    for number in [format!("{}원", thousands(revenue)), thousands(orders), thousands(buyers)] {
        assert!(text.contains(&number), "the PDF lacks {number}:\n{text}");
    }

    // The archive.
    let archived = s3_get(&bucket, "reports/weekly/2024-W47.pdf");
    assert!(archived.starts_with(b"%PDF-"));
    assert_eq!(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&archived)), sha256_file(&pdf));

    // The mail: recipients, subject, both bodies, and the same PDF attached.
    let msgs = messages_to(&to);
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    let m = &msgs[0];
    assert!(m["to"].as_str().unwrap().contains(&to));
    assert_eq!(m["from"], "reports@shop.test");
    let id = m["message_id"].as_str().unwrap();
    assert!(id.starts_with('<') && id.ends_with("@shop.test>"), "a Message-ID in the sender's domain: {id}");
    assert_eq!(m["subject"], "[주간 KPI] 2024-11-18 ~ 2024-11-24");
    let revenue_text = format!("{}원", thousands(revenue));
    assert!(m["text"].as_str().unwrap().contains(&format!("매출: {revenue_text}")), "{}", m["text"]);
    assert!(m["html"].as_str().unwrap().contains(&format!("<b>{revenue_text}</b>")), "{}", m["html"]);
    let att = &m["attachments"][0];
    assert_eq!(att["filename"], "weekly_kpi_2024-W47.pdf");
    assert_eq!(att["type"], "application/pdf");
    assert_eq!(att["head"], "%PDF-");
    assert_eq!(att["sha256"].as_str().unwrap(), sha256_file(&pdf));
    // The numbers behind it (`data_output`), under their own name.
    let att = &m["attachments"][1];
    assert_eq!(att["filename"], "weekly_kpi_2024-W47.json");
    assert_eq!(att["type"], "application/json");
    assert_eq!(att["head"], "{\n  \"");
    assert_eq!(m["attachments"].as_array().unwrap().len(), 2);
});

sluice_test!(an_empty_week_still_renders_in_both_languages, |p| {
    p.own_database();
    p.copy_shipped();
    p.sql(&std::fs::read_to_string(p.path().join("sql/schema/warehouse.sql")).unwrap());
    for (lang, words) in [("ko", ["주간 KPI 리포트", "데이터 없음"]), ("en", ["Weekly KPI report", "No data"])] {
        let out = p.sluice(&["run", "weekly_report", "--date", "2025-06-02", "--conf", &format!("lang={lang}"), "--rerun"]).ok();
        assert!(out.stdout.contains("email_report") && out.stdout.contains("written to"), "{}", out.all());
        let text = pdftotext(&p.path().join("reports/out/weekly_kpi_2025-W23.pdf"));
        for w in words {
            assert!(text.contains(w), "{lang}: lacks {w:?}:\n{text}");
        }
        assert!(!text.contains("NaN") && !text.contains("inf"), "{text}");
    }
    // Without an SMTP connection the message waits in the outbox.
    let outbox: Vec<_> = std::fs::read_dir(p.path().join("outbox")).unwrap().collect();
    assert_eq!(outbox.len(), 2);
});

sluice_test!(failure_notices_name_the_run_and_carry_the_log, |p| {
    let smtp = service("SLUICE_TEST_SMTP_PORT");
    let to = format!("oncall-{}@shop.test", p.schema.replace('_', "-"));
    p.set_env("SLUICE_CONN_SMTP_DEFAULT", &format!("smtp://127.0.0.1:{smtp}?tls=none&from=sluice@shop.test"));
    p.set_env("SLUICE_CONN_API", "https://svc:n0tice-secret@api.example.com");
    p.write(
        "dags/fails.yaml",
        &format!(
            r#"
default_args:
  email_on_failure: ["{to}"]
  email_on_retry: ["{to}"]
tasks:
  - id: breaks
    type: shell
    retries: 1
    retry_delay: 0s
    command: "echo marker-line-$SLUICE_TRY_NUMBER; echo token {{{{ conn.api.password }}}}; exit 4"
"#
        ),
    );
    p.sluice(&["run", "fails"]).code(1);
    let run = p.last_run("fails");
    let msgs = messages_to(&to);
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    let subjects: Vec<&str> = msgs.iter().map(|m| m["subject"].as_str().unwrap()).collect();
    assert!(subjects.contains(&format!("[sluice] fails.breaks failed and will be retried (run {run}, try 1/2)").as_str()), "{subjects:?}");
    assert!(subjects.contains(&format!("[sluice] fails.breaks failed (run {run}, try 2/2)").as_str()), "{subjects:?}");
    for m in &msgs {
        let body = m["text"].as_str().unwrap();
        assert!(body.contains("command exited with status 4") && body.contains("marker-line-"), "{body}");
        assert!(!body.contains("n0tice-secret") && body.contains("token ***"), "{body}");
    }
});

/// A real aiosmtpd server that refuses every recipient with a 550 reply,
/// as a server does for a mailbox that does not exist. Stopped on drop.
struct RefusingSmtp {
    child: std::process::Child,
    port: u16,
}

impl RefusingSmtp {
    fn start(dir: &Path) -> RefusingSmtp {
        std::fs::write(
            dir.join("refuse.py"),
            "class Refuse:\n    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):\n        return '550 5.1.1 mailbox unavailable'\n",
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(service("SLUICE_TEST_PYTHON"))
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}"), "-c", "refuse.Refuse"])
            .env("PYTHONPATH", dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        crate::harness::wait_until("the refusing SMTP server listens", std::time::Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        RefusingSmtp { child, port }
    }
}

impl Drop for RefusingSmtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

sluice_test!(smtp_problems_fail_the_send_clearly_and_keep_the_report, |p| {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let smtp = service("SLUICE_TEST_SMTP_PORT");
    let refusing = RefusingSmtp::start(p.path());
    p.set_env("SLUICE_CONN_DOWN", &format!("smtp://127.0.0.1:{closed}?tls=none"));
    p.set_env("SLUICE_CONN_NOAUTH", &format!("smtp://user:l0gin-secret@127.0.0.1:{smtp}?tls=none"));
    p.set_env("SLUICE_CONN_REFUSES", &format!("smtp://127.0.0.1:{}?tls=none&from=reports@shop.test", refusing.port));
    p.write("out/report.txt", "kept");
    p.write(
        "dags/mail.yaml",
        r#"
tasks:
  - { id: down, type: email, conn: down, to: [a@shop.test], subject: down-subject, text: t, retries: 1, retry_delay: 0s }
  - { id: login, type: email, conn: noauth, to: [a@shop.test], subject: s, text: t, retries: 0 }
  - { id: refused, type: email, conn: refuses, to: [nobody@shop.test], subject: refused-subject, text: t, retries: 2, retry_delay: 0s }
"#,
    );
    let out = p.sluice(&["run", "mail"]).code(1);
    let run = p.last_run("mail");
    let json = p.run_json(run);
    let task = |id: &str| json["tasks"].as_array().unwrap().iter().find(|t| t["task_id"] == id).unwrap().clone();
    let err = |id: &str| task(id)["error"].as_str().unwrap().to_string();
    assert!(err("down").contains(&format!("cannot reach SMTP server 127.0.0.1:{closed} (connection `down`)")), "{}", err("down"));
    assert!(err("login").contains("refused the login") && err("login").contains("check the user and password"), "{}", err("login"));
    assert!(!out.all().contains("l0gin-secret") && !json.to_string().contains("l0gin-secret"));

    // Down: retried, then the message waits in the outbox, named in the error.
    assert_eq!(task("down")["try_number"], 2, "a connection failure is retried");
    let kept = format!("outbox/mail.down.run-{run}.eml");
    assert!(err("down").contains(&format!("the message is saved in {kept}")), "{}", err("down"));
    let eml = std::fs::read_to_string(p.path().join(&kept)).unwrap();
    assert!(eml.contains("Subject: down-subject") && eml.contains("To: a@shop.test"), "{eml}");

    // Refused with a 5xx: one try only, and kept as well.
    assert_eq!(task("refused")["try_number"], 1, "a permanent refusal is not retried");
    assert_eq!(task("refused")["error_kind"], "permanent");
    let e = err("refused");
    assert!(e.contains("550") && e.contains("not retried") && e.contains(&format!("outbox/mail.refused.run-{run}.eml")), "{e}");
    assert!(p.path().join(format!("outbox/mail.refused.run-{run}.eml")).exists());
});

sluice_test!(failure_notices_render_their_addresses_and_are_never_lost, |p| {
    let smtp = service("SLUICE_TEST_SMTP_PORT");
    let to = format!("alerts-{}@shop.test", p.schema.replace('_', "-"));
    p.set_env("SLUICE_VAR_ALERTS_TO", &to);
    // No `from` on the connection: the sender is not this machine's name.
    p.set_env("SLUICE_CONN_SMTP_DEFAULT", &format!("smtp://127.0.0.1:{smtp}?tls=none"));
    p.write(
        "dags/fails.yaml",
        r#"
default_args:
  email_on_failure: ["{{ var.alerts_to }}"]
tasks:
  - { id: breaks, type: shell, command: "exit 3" }
"#,
    );
    let out = p.sluice(&["run", "fails"]).code(1);
    assert!(out.stdout.contains(&format!("failure notice sent to {to}")), "the run's output says where the notice went:\n{}", out.all());
    let msgs = messages_to(&to);
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert_eq!(msgs[0]["from"], "sluice@localhost");
    assert!(msgs[0]["message_id"].as_str().unwrap().ends_with("@localhost>"), "{}", msgs[0]["message_id"]);

    // The SMTP server is unreachable: the lost notice is said at the
    // default log level, in the run's output and in `runs show`.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    p.set_env("SLUICE_CONN_SMTP_DEFAULT", &format!("smtp://127.0.0.1:{closed}?tls=none"));
    let out = p.sluice(&["run", "fails", "--rerun"]).code(1);
    let said = format!("failure notice to {to} NOT sent");
    assert!(out.stdout.contains(&said) && out.stderr.contains(&said), "{}", out.all());
    let show = p.sluice(&["runs", "show", &p.last_run("fails").to_string()]).ok();
    assert!(show.stdout.contains(&said) && show.stdout.contains("cannot reach SMTP server"), "{}", show.stdout);
    let log = p.sluice(&["logs", &p.last_run("fails").to_string(), "breaks"]).ok();
    assert!(log.stdout.contains(&said), "{}", log.stdout);

    // Addresses are checked before any run: a bad one, and a variable that
    // is not defined, are errors at `dags validate` with file and line.
    p.write(
        "dags/fails.yaml",
        r#"
default_args:
  email_on_failure: ["{{ var.alerts_too }}"]
tasks:
  - { id: breaks, type: shell, command: "exit 3", email_on_retry: ["not an address"] }
"#,
    );
    let v = p.sluice(&["dags", "validate"]).code(78);
    assert!(v.all().contains("fails.yaml:3:") && v.all().contains("variable `alerts_too` is not defined"), "{}", v.all());
    assert!(v.all().contains("fails.yaml:5:") && v.all().contains("invalid address `not an address`"), "{}", v.all());
});
