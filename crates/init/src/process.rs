//! Turns the run spec (or an exec request) into a concrete launch plan:
//! argv, program path, environment, identity and working directory, with
//! Docker's rules.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::protocol::ExecRequest;
use crate::spec::{ImageProcess, InitOverrides, RunSpec};
use crate::users::{ResolvedUser, resolve_user_in_root};

/// PATH when neither the image nor the machine sets one (Docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Exit code for a command that cannot be found.
pub const EXIT_NOT_FOUND: i32 = 127;
/// Exit code for a command that was found but cannot be executed.
pub const EXIT_NOT_EXECUTABLE: i32 = 126;

/// Why a process could not be planned, with the exit code to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchError {
    pub message: String,
    pub exit_code: i32,
}

impl LaunchError {
    pub fn not_found(message: impl Into<String>) -> Self {
        LaunchError {
            message: message.into(),
            exit_code: EXIT_NOT_FOUND,
        }
    }

    pub fn not_executable(message: impl Into<String>) -> Self {
        LaunchError {
            message: message.into(),
            exit_code: EXIT_NOT_EXECUTABLE,
        }
    }
}

impl std::fmt::Display for LaunchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for LaunchError {}

/// Everything needed to start one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchPlan {
    /// argv as given; `argv[0]` is kept as the process's own name.
    pub argv: Vec<String>,
    /// The executable: `argv[0]` itself when it has a slash, else found in PATH.
    pub program: PathBuf,
    /// Ordered `(key, value)` pairs, keys unique.
    pub env: Vec<(String, String)>,
    pub user: ResolvedUser,
    pub workdir: PathBuf,
}

fn non_empty(list: &Option<Vec<String>>) -> Option<&Vec<String>> {
    list.as_ref().filter(|list| !list.is_empty())
}

/// argv with Docker's precedence: `exec` replaces everything; otherwise
/// entrypoint (override or image) followed by cmd (override, or the image's
/// unless the entrypoint was overridden). Empty override lists count as unset.
pub fn resolve_argv(
    image: &ImageProcess,
    init: &InitOverrides,
) -> Result<Vec<String>, LaunchError> {
    if let Some(exec) = non_empty(&init.exec) {
        return Ok(exec.clone());
    }
    let entrypoint_overridden = non_empty(&init.entrypoint);
    let entrypoint = entrypoint_overridden
        .or(image.entrypoint.as_ref())
        .cloned()
        .unwrap_or_default();
    let cmd = match non_empty(&init.cmd) {
        Some(cmd) => cmd.clone(),
        None if entrypoint_overridden.is_some() => Vec::new(),
        None => image.cmd.clone().unwrap_or_default(),
    };
    let argv: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if argv.is_empty() {
        return Err(LaunchError::not_found(
            "no command to run: the image has no entrypoint or cmd and the machine config sets none",
        ));
    }
    Ok(argv)
}

/// Sets `key` to `value`, replacing an earlier value in place.
pub fn env_set(env: &mut Vec<(String, String)>, key: &str, value: &str) {
    match env.iter_mut().find(|(existing, _)| existing == key) {
        Some(entry) => entry.1 = value.to_string(),
        None => env.push((key.to_string(), value.to_string())),
    }
}

pub fn env_get<'a>(env: &'a [(String, String)], key: &str) -> Option<&'a str> {
    env.iter()
        .find(|(existing, _)| existing == key)
        .map(|(_, value)| value.as_str())
}

/// Applies `K=V` entries in order (an entry without `=` sets an empty value).
pub fn env_apply_entries(env: &mut Vec<(String, String)>, entries: &[String]) {
    for entry in entries {
        let (key, value) = entry.split_once('=').unwrap_or((entry.as_str(), ""));
        if !key.is_empty() {
            env_set(env, key, value);
        }
    }
}

/// The image env overridden by the machine env.
pub fn merge_env(
    image_env: &[String],
    machine_env: &BTreeMap<String, String>,
) -> Vec<(String, String)> {
    let mut env = Vec::new();
    env_apply_entries(&mut env, image_env);
    for (key, value) in machine_env {
        env_set(&mut env, key, value);
    }
    env
}

/// Fills in what Docker adds when absent: PATH, HOME, HOSTNAME, and TERM for
/// a terminal.
pub fn env_add_defaults(env: &mut Vec<(String, String)>, home: &str, hostname: &str, tty: bool) {
    let mut default = |key: &str, value: &str| {
        if env_get(env, key).is_none() {
            env.push((key.to_string(), value.to_string()));
        }
    };
    default("PATH", DEFAULT_PATH);
    default("HOME", home);
    if !hostname.is_empty() {
        default("HOSTNAME", hostname);
    }
    if tty {
        default("TERM", "xterm");
    }
}

/// Finds the executable for `argv0`: as is when it has a slash, else the
/// first executable regular file in `path_var`. Paths are checked under
/// `root` but returned as the guest sees them.
pub fn find_program(argv0: &str, path_var: &str, root: &Path) -> Result<PathBuf, LaunchError> {
    let under_root = |guest: &Path| root.join(guest.strip_prefix("/").unwrap_or(guest));
    if argv0.contains('/') {
        // Relative paths resolve against the working directory at exec time.
        if Path::new(argv0).is_absolute() {
            check_executable(&under_root(Path::new(argv0)), argv0)?;
        }
        return Ok(PathBuf::from(argv0));
    }
    let mut not_executable = None;
    for dir in path_var.split(':').filter(|dir| !dir.is_empty()) {
        let candidate = Path::new(dir).join(argv0);
        match check_executable(&under_root(&candidate), &candidate.to_string_lossy()) {
            Ok(()) => return Ok(candidate),
            Err(error) if error.exit_code == EXIT_NOT_EXECUTABLE => {
                not_executable.get_or_insert(error)
            }
            Err(_) => continue,
        };
    }
    Err(not_executable.unwrap_or_else(|| {
        LaunchError::not_found(format!(
            "{argv0:?}: executable file not found in $PATH ({path_var})"
        ))
    }))
}

fn check_executable(path: &Path, shown: &str) -> Result<(), LaunchError> {
    let metadata = std::fs::metadata(path)
        .map_err(|error| LaunchError::not_found(format!("{shown}: {error}")))?;
    if metadata.is_dir() {
        return Err(LaunchError::not_executable(format!(
            "{shown}: is a directory"
        )));
    }
    if metadata.permissions().mode() & 0o111 == 0 {
        return Err(LaunchError::not_executable(format!(
            "{shown}: permission denied (not executable)"
        )));
    }
    Ok(())
}

/// The user spec that applies to the machine: override, else image, else root.
pub fn machine_user_spec(spec: &RunSpec) -> &str {
    spec.user
        .as_deref()
        .filter(|user| !user.is_empty())
        .unwrap_or(spec.image.user.as_str())
}

fn machine_workdir(spec: &RunSpec) -> PathBuf {
    if spec.image.working_dir.is_empty() {
        PathBuf::from("/")
    } else {
        PathBuf::from(&spec.image.working_dir)
    }
}

fn plan(
    spec: &RunSpec,
    argv: Vec<String>,
    user_spec: &str,
    extra_env: &[String],
    workdir: PathBuf,
    tty: bool,
    root: &Path,
) -> Result<LaunchPlan, LaunchError> {
    let user = resolve_user_in_root(user_spec, root).map_err(LaunchError::not_found)?;
    let mut env = merge_env(&spec.image.env, &spec.env);
    env_apply_entries(&mut env, extra_env);
    env_add_defaults(&mut env, &user.home, &spec.hostname, tty);
    let program = find_program(
        &argv[0],
        env_get(&env, "PATH").unwrap_or(DEFAULT_PATH),
        root,
    )?;
    Ok(LaunchPlan {
        argv,
        program,
        env,
        user,
        workdir,
    })
}

/// The machine's main program. `root` is where the guest's files are (`/`
/// inside the machine).
pub fn plan_main(spec: &RunSpec, root: &Path) -> Result<LaunchPlan, LaunchError> {
    let argv = resolve_argv(&spec.image, &spec.init)?;
    plan(
        spec,
        argv,
        machine_user_spec(spec),
        &[],
        machine_workdir(spec),
        spec.init.tty,
        root,
    )
}

/// An exec into the machine: machine env plus the request's extra entries,
/// machine user unless overridden, machine workdir unless overridden.
pub fn plan_exec(
    spec: &RunSpec,
    request: &ExecRequest,
    root: &Path,
) -> Result<LaunchPlan, LaunchError> {
    if request.argv.is_empty() || request.argv[0].is_empty() {
        return Err(LaunchError::not_found("exec needs a non-empty argv"));
    }
    let user_spec = request
        .user
        .as_deref()
        .filter(|user| !user.is_empty())
        .unwrap_or(machine_user_spec(spec));
    let workdir = request
        .workdir
        .as_deref()
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from);
    let workdir = workdir.unwrap_or_else(|| machine_workdir(spec));
    plan(
        spec,
        request.argv.clone(),
        user_spec,
        &request.env,
        workdir,
        request.tty,
        root,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|item| item.to_string()).collect()
    }

    fn some(items: &[&str]) -> Option<Vec<String>> {
        Some(strings(items))
    }

    fn image(entrypoint: Option<Vec<String>>, cmd: Option<Vec<String>>) -> ImageProcess {
        ImageProcess {
            entrypoint,
            cmd,
            ..Default::default()
        }
    }

    fn overrides(
        exec: Option<Vec<String>>,
        entrypoint: Option<Vec<String>>,
        cmd: Option<Vec<String>>,
    ) -> InitOverrides {
        InitOverrides {
            exec,
            entrypoint,
            cmd,
            tty: false,
        }
    }

    /// Image, overrides, expected argv (None: no command).
    type Case<'a> = (&'a ImageProcess, InitOverrides, Option<Vec<String>>);

    #[test]
    fn override_matrix_follows_docker() {
        let both = image(some(&["/ep", "-x"]), some(&["img-cmd"]));
        let only_cmd = image(None, some(&["img-cmd", "arg"]));
        let only_ep = image(some(&["/ep"]), None);
        let none = image(None, None);

        let cases: Vec<Case> = vec![
            // No overrides: entrypoint ++ cmd.
            (
                &both,
                overrides(None, None, None),
                Some(strings(&["/ep", "-x", "img-cmd"])),
            ),
            (
                &only_cmd,
                overrides(None, None, None),
                Some(strings(&["img-cmd", "arg"])),
            ),
            (
                &only_ep,
                overrides(None, None, None),
                Some(strings(&["/ep"])),
            ),
            (&none, overrides(None, None, None), None),
            // cmd override keeps the image entrypoint.
            (
                &both,
                overrides(None, None, some(&["c"])),
                Some(strings(&["/ep", "-x", "c"])),
            ),
            (
                &only_cmd,
                overrides(None, None, some(&["c"])),
                Some(strings(&["c"])),
            ),
            (
                &none,
                overrides(None, None, some(&["c"])),
                Some(strings(&["c"])),
            ),
            // entrypoint override drops the image cmd.
            (
                &both,
                overrides(None, some(&["/new"]), None),
                Some(strings(&["/new"])),
            ),
            (
                &only_cmd,
                overrides(None, some(&["/new"]), None),
                Some(strings(&["/new"])),
            ),
            // entrypoint and cmd overrides together.
            (
                &both,
                overrides(None, some(&["/new"]), some(&["c"])),
                Some(strings(&["/new", "c"])),
            ),
            // exec wins over everything.
            (
                &both,
                overrides(some(&["/x", "1"]), some(&["/new"]), some(&["c"])),
                Some(strings(&["/x", "1"])),
            ),
            (
                &none,
                overrides(some(&["/x"]), None, None),
                Some(strings(&["/x"])),
            ),
            // Empty override lists count as unset.
            (
                &both,
                overrides(some(&[]), some(&[]), some(&[])),
                Some(strings(&["/ep", "-x", "img-cmd"])),
            ),
            (&none, overrides(some(&[]), None, some(&[])), None),
        ];
        for (index, (image, init, expected)) in cases.into_iter().enumerate() {
            let actual = resolve_argv(image, &init).ok();
            assert_eq!(
                actual, expected,
                "case {index}: image {image:?}, overrides {init:?}"
            );
        }
    }

    #[test]
    fn no_command_is_exit_127() {
        let error = resolve_argv(&image(None, None), &InitOverrides::default()).unwrap_err();
        assert_eq!(error.exit_code, 127);
        assert!(error.message.contains("no command"));
    }

    #[test]
    fn machine_env_overrides_image_env_in_place() {
        let image_env = strings(&["PATH=/img/bin", "A=1", "B=2", "A=3", "NOVALUE"]);
        let machine: BTreeMap<String, String> = [
            ("B".to_string(), "machine".to_string()),
            ("FLY_APP_NAME".to_string(), "app".to_string()),
        ]
        .into();
        let env = merge_env(&image_env, &machine);
        assert_eq!(
            env,
            vec![
                ("PATH".into(), "/img/bin".into()),
                ("A".into(), "3".into()),
                ("B".into(), "machine".into()),
                ("NOVALUE".into(), "".into()),
                ("FLY_APP_NAME".into(), "app".into()),
            ]
        );
    }

    #[test]
    fn defaults_only_fill_gaps() {
        let mut env = vec![("HOME".to_string(), "/custom".to_string())];
        env_add_defaults(&mut env, "/home/app", "host1", true);
        assert_eq!(env_get(&env, "HOME"), Some("/custom"));
        assert_eq!(env_get(&env, "PATH"), Some(DEFAULT_PATH));
        assert_eq!(env_get(&env, "HOSTNAME"), Some("host1"));
        assert_eq!(env_get(&env, "TERM"), Some("xterm"));
        let mut env = vec![("PATH".to_string(), "/only".to_string())];
        env_add_defaults(&mut env, "/root", "", false);
        assert_eq!(env_get(&env, "PATH"), Some("/only"));
        assert_eq!(env_get(&env, "HOME"), Some("/root"));
        assert_eq!(env_get(&env, "TERM"), None);
        assert_eq!(env_get(&env, "HOSTNAME"), None);
    }

    fn fake_root() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let make = |path: &str, mode: u32| {
            let full = root.path().join(path);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(&full, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&full, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        make("usr/bin/tool", 0o755);
        make("bin/tool", 0o755);
        make("bin/data", 0o644);
        make("opt/app/run", 0o755);
        make("etc/passwd", 0o644);
        std::fs::write(
            root.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            root.path().join("etc/group"),
            "root:x:0:\napp:x:1000:\nextra:x:50:app\n",
        )
        .unwrap();
        root
    }

    #[test]
    fn program_lookup_in_path() {
        let root = fake_root();
        let found = find_program("tool", "/nowhere:/usr/bin:/bin", root.path()).unwrap();
        assert_eq!(found, PathBuf::from("/usr/bin/tool"));
        assert_eq!(
            find_program("tool", "/bin:/usr/bin", root.path()).unwrap(),
            PathBuf::from("/bin/tool")
        );
        assert_eq!(
            find_program("missing", "/bin", root.path())
                .unwrap_err()
                .exit_code,
            127
        );
        assert_eq!(
            find_program("data", "/bin", root.path())
                .unwrap_err()
                .exit_code,
            126
        );
        assert_eq!(
            find_program("/opt/app/run", "", root.path()).unwrap(),
            PathBuf::from("/opt/app/run")
        );
        assert_eq!(
            find_program("/opt/app/none", "", root.path())
                .unwrap_err()
                .exit_code,
            127
        );
        assert_eq!(
            find_program("./rel", "", root.path()).unwrap(),
            PathBuf::from("./rel")
        );
    }

    #[test]
    fn plans_the_main_program_and_execs() {
        let root = fake_root();
        let spec = RunSpec {
            hostname: "m1".into(),
            image: ImageProcess {
                entrypoint: some(&["tool"]),
                cmd: some(&["serve"]),
                env: strings(&["PATH=/usr/bin:/bin", "LANG=C"]),
                user: "app".into(),
                working_dir: "/srv".into(),
            },
            env: [("LANG".to_string(), "en".to_string())].into(),
            ..Default::default()
        };
        let plan = plan_main(&spec, root.path()).unwrap();
        assert_eq!(plan.argv, strings(&["tool", "serve"]));
        assert_eq!(plan.program, PathBuf::from("/usr/bin/tool"));
        assert_eq!(
            (
                plan.user.uid,
                plan.user.gid,
                plan.user.supplementary_gids.clone()
            ),
            (1000, 1000, vec![50])
        );
        assert_eq!(env_get(&plan.env, "LANG"), Some("en"));
        assert_eq!(env_get(&plan.env, "HOME"), Some("/home/app"));
        assert_eq!(plan.workdir, PathBuf::from("/srv"));

        let overridden = RunSpec {
            user: Some("root".into()),
            ..spec.clone()
        };
        assert_eq!(plan_main(&overridden, root.path()).unwrap().user.uid, 0);

        let request = ExecRequest {
            argv: strings(&["/opt/app/run"]),
            env: strings(&["LANG=fr", "EXTRA=1"]),
            user: Some("0".into()),
            workdir: Some("/tmp".into()),
            tty: true,
            ..Default::default()
        };
        let exec = plan_exec(&spec, &request, root.path()).unwrap();
        assert_eq!(exec.user.uid, 0);
        assert_eq!(env_get(&exec.env, "HOME"), Some("/root"));
        assert_eq!(env_get(&exec.env, "LANG"), Some("fr"));
        assert_eq!(env_get(&exec.env, "EXTRA"), Some("1"));
        assert_eq!(env_get(&exec.env, "TERM"), Some("xterm"));
        assert_eq!(exec.workdir, PathBuf::from("/tmp"));

        let default_exec = plan_exec(
            &spec,
            &ExecRequest {
                argv: strings(&["tool"]),
                ..Default::default()
            },
            root.path(),
        )
        .unwrap();
        assert_eq!(
            (default_exec.user.uid, default_exec.workdir.clone()),
            (1000, PathBuf::from("/srv"))
        );

        assert!(plan_exec(&spec, &ExecRequest::default(), root.path()).is_err());
        let ghost = RunSpec {
            user: Some("ghost".into()),
            ..spec
        };
        let error = plan_main(&ghost, root.path()).unwrap_err();
        assert!(error.message.contains("ghost"));
    }
}
