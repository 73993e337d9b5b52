//! `vpcctl max-pods` against LocalStack's DescribeInstanceTypes (its table is EC2's): the figures EKS publishes
//! for kubelet's `--max-pods`, in secondary-IP and prefix mode, through vpcctl (which runs vpcctl-max-pods).
//! LocalStack must be running (`make test` starts it).

use std::process::{Command, Output};

use vpc_sim::ipamd_proc::sibling_binary;
use vpc_sim::localstack;

fn vpcctl(args: &[&str]) -> Output {
    Command::new(sibling_binary("vpcctl"))
        .arg("max-pods")
        .args(args)
        .envs(localstack::aws_env(&localstack::endpoint()))
        .output()
        .expect("run vpcctl")
}

fn max_pods(args: &[&str]) -> u32 {
    let out = vpcctl(args);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "vpcctl max-pods {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    text.trim().parse().unwrap_or_else(|_| panic!("vpcctl max-pods {args:?} printed {text:?}, not a number"))
}

#[test]
fn secondary_ip_mode_figures_match_eks() {
    for (t, want) in [("m5.large", 29), ("t3.medium", 17), ("m5.24xlarge", 737)] {
        assert_eq!(max_pods(&["--instance-type", t]), want, "{t}");
    }
}

#[test]
fn prefix_mode_figures_match_eks() {
    for (t, want) in [("m5.large", 110), ("m5.24xlarge", 250), ("t3.medium", 110)] {
        assert_eq!(max_pods(&["--instance-type", t, "--prefix-delegation"]), want, "{t}");
    }
}

#[test]
fn custom_networking_and_max_eni_take_enis_away() {
    assert_eq!(max_pods(&["--instance-type", "m5.large", "--custom-networking"]), 20);
    assert_eq!(max_pods(&["--instance-type", "m5.large", "--max-eni", "2"]), 20);
}

#[test]
fn json_shows_the_inputs() {
    let out = vpcctl(&["--instance-type", "m5.24xlarge", "--prefix-delegation", "-o", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["max_enis"], 15);
    assert_eq!(v["ipv4_per_eni"], 50);
    assert_eq!(v["vcpus"], 96);
    assert_eq!(v["ceiling"], 250);
    assert_eq!(v["max_pods"], 250);
}

#[test]
fn an_unknown_instance_type_is_a_clear_error() {
    let out = vpcctl(&["--instance-type", "m5.nonesuch"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("m5.nonesuch"), "the error names the type: {err}");
    assert!(out.stdout.is_empty(), "no figure printed: {:?}", String::from_utf8_lossy(&out.stdout));
}
