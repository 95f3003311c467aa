//! The steps of the tour, each said, shown with real `kubectl` and host output, and waited
//! for: placement, files, a replicated snapshot, a mount between projects, a move the mount
//! follows, a failover, and the old host's diverged writes kept.

use std::time::Duration;

use super::{Demo, NS, Step};

impl Demo {
    pub(super) fn tour(&self) -> Step {
        self.say("1. Three hosts in two datacenters, each with a ZFS pool and an agent");
        self.show("kubectl", &["get", "storagepools"])?;
        self.say("2. Apply examples/ (the dev cluster declared its own pools like examples/01-storagepools.yaml)");
        let ex = self.repo.join("examples");
        let files: Vec<String> = [
            "00-namespace.yaml",
            "10-project-plain.yaml",
            "11-project-pinned.yaml",
            "12-project-mounts.yaml",
            "13-project-closed.yaml",
        ]
        .iter()
        .map(|f| ex.join(f).display().to_string())
        .collect();
        let mut args = vec!["apply"];
        for f in &files {
            args.extend(["-f", f.as_str()]);
        }
        self.show("kubectl", &args)?;
        self.say("3. thesis is placed with three copies across both datacenters");
        let first = self.in_sync("thesis", 3, None)?;
        self.show("kubectl", &["get", "proj,sr", "-n", NS])?;

        self.say("4. Files written into thesis on its primary host");
        let mount = self
            .mount_path("thesis")
            .ok_or("thesis has no mount path")?;
        let file = mount.join("chapter1.txt");
        std::fs::write(&file, "It was a dark and stormy night.\n").map_err(|e| e.to_string())?;
        std::os::unix::fs::chown(&file, Some(2001), Some(2001)).map_err(|e| e.to_string())?;
        self.show("ls", &["-ln", &mount.display().to_string()])?;

        self.say("5. A snapshot on demand, replicated to every copy");
        let stamp = chrono::Utc::now().timestamp().to_string();
        self.show(
            "kubectl",
            &[
                "annotate",
                "proj",
                "thesis",
                "-n",
                NS,
                "--overwrite",
                &format!("projstore.io/snapshot-now={stamp}"),
            ],
        )?;
        let snap = self.in_sync("thesis", 3, Some(&first))?;
        self.show(
            "kubectl",
            &["get", "sr", "-n", NS, "-l", "projstore.io/project=thesis"],
        )?;

        self.say("6. A folder of course mounted in student-alice (sshfs from course's host, then bindfs)");
        let course = self.wait("course Ready", Duration::from_secs(60), || {
            self.mount_path("course")
        })?;
        for d in ["handin/alice", "materials"] {
            let p = course.join(d);
            std::fs::create_dir_all(&p).map_err(|e| e.to_string())?;
            for q in [course.join("handin"), p] {
                std::os::unix::fs::chown(&q, Some(3000), Some(3000)).map_err(|e| e.to_string())?;
            }
        }
        std::fs::write(course.join("materials/week1.txt"), "Read chapter 1.\n")
            .map_err(|e| e.to_string())?;
        let alice = self.wait(
            "student-alice's mounts Mounted",
            Duration::from_secs(90),
            || {
                let p = self.project("student-alice")?;
                let mounts = p["status"]["mounts"].as_array()?.clone();
                (mounts.len() == 2 && mounts.iter().all(|m| m["phase"] == "Mounted"))
                    .then(|| self.mount_path("student-alice"))
                    .flatten()
            },
        )?;
        self.show(
            "kubectl",
            &[
                "get",
                "proj",
                "student-alice",
                "-n",
                NS,
                "-o",
                "jsonpath={range .status.mounts[*]}{.mountPath}: {.phase} ({.message}){\"\\n\"}{end}",
            ],
        )?;
        let answer = alice.join("handin/answer.txt");
        std::fs::write(&answer, "42\n").map_err(|e| e.to_string())?;
        println!("(wrote {} through the mount)", answer.display());
        self.show(
            "ls",
            &["-ln", &course.join("handin/alice").display().to_string()],
        )?;
        println!("(created through the mount, owned by course's owner 3000)");

        self.say("7. course moves to another pool; the mount in student-alice follows it");
        let course_primary = self.primary("course").ok_or("course has no primary")?;
        let from = course_primary["spec"]["pool"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let to = self
            .replicas("course")
            .iter()
            .map(|r| r["spec"]["pool"].as_str().unwrap_or_default().to_owned())
            .find(|p| *p != from)
            .ok_or("course has no second copy")?;
        self.show(
            "kubectl",
            &[
                "patch",
                "proj",
                "course",
                "-n",
                NS,
                "--type",
                "merge",
                "-p",
                &format!("{{\"spec\":{{\"placement\":{{\"pool\":\"{to}\"}}}}}}"),
            ],
        )?;
        let to_host = self.host_pool(&to).ok_or("unknown pool")?;
        self.wait("moved, mount followed", Duration::from_secs(120), || {
            let p = self.primary("course")?;
            let table = std::fs::read_to_string("/proc/self/mounts").ok()?;
            let follows = table
                .lines()
                .any(|l| l.starts_with(&format!("root@{}:/{NS}/course/", to_host.addr)));
            (p["spec"]["pool"] == to.as_str()
                && follows
                && alice.join("handin/answer.txt").exists())
            .then_some(())
        })?;
        self.show(
            "kubectl",
            &["get", "sr", "-n", NS, "-l", "projstore.io/project=course"],
        )?;
        self.show(
            "cat",
            &[&alice.join("handin/answer.txt").display().to_string()],
        )?;

        self.say("8. thesis's primary host is lost (its agent killed); thesis fails over");
        let old = self.primary("thesis").ok_or("thesis has no primary")?;
        let old_pool = old["spec"]["pool"].as_str().unwrap_or_default().to_owned();
        let old_epoch = old["spec"]["epoch"].as_u64().unwrap_or(0);
        let old_host = self.host_pool(&old_pool).ok_or("unknown pool")?;
        let agent = format!("agent-{}", old_host.node);
        self.show("projstore-dev", &["kill", &agent, "--hold"])?;
        std::fs::write(
            mount.join("late.txt"),
            "written on the lost host after its last snapshot\n",
        )
        .map_err(|e| e.to_string())?;
        println!("(wrote late.txt on the lost host: it was never replicated)");
        println!(
            "(the pool turns NotReady after 40 s without a heartbeat; failover after the 30 s grace)"
        );
        let new = self.wait("failed over", Duration::from_secs(180), || {
            let p = self.primary("thesis")?;
            (p["spec"]["pool"] != old_pool.as_str()).then_some(p)
        })?;
        self.show(
            "kubectl",
            &[
                "get",
                "proj,sr",
                "-n",
                NS,
                "-l",
                "projstore.io/project=thesis",
            ],
        )?;
        self.show("kubectl", &["get", "proj", "thesis", "-n", NS])?;
        let applied = new["status"]["appliedSnapshot"]["guid"]
            .as_str()
            .unwrap_or_default();
        println!(
            "(the new primary holds the last replicated snapshot: {})",
            if applied == snap { "yes" } else { "not yet" }
        );
        let new_mount = self.wait("new primary mounted", Duration::from_secs(60), || {
            let m = self.mount_path("thesis")?;
            m.join("chapter1.txt").exists().then_some(m)
        })?;
        self.show("ls", &["-ln", &new_mount.display().to_string()])?;

        self.say("9. The old host returns: demoted, its diverged writes kept under forks/");
        self.show("projstore-dev", &["release", &agent])?;
        let msg = self.wait("Diverged", Duration::from_secs(120), || {
            let p = self.project("thesis")?;
            p["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "Diverged" && c["status"] == "True")
                .and_then(|c| c["message"].as_str().map(str::to_owned))
        })?;
        println!("Diverged: {msg}");
        self.show(
            "zfs",
            &[
                "list",
                "-r",
                "-o",
                "name,used,mountpoint",
                &format!("{}/forks", old_host.pool),
            ],
        )?;
        self.show(
            "zfs",
            &[
                "list",
                "-t",
                "snapshot",
                "-o",
                "name",
                "-r",
                &format!("{}/forks/{NS}/thesis-e{old_epoch}", old_host.pool),
            ],
        )?;
        self.in_sync("thesis", 3, None)?;
        self.show("kubectl", &["get", "proj,sr,sp", "-n", NS])?;
        Ok(())
    }
}
