// The harness's Kafka administration for security tests: SCRAM users and
// ACLs, through the broker's PLAINTEXT listener (whose anonymous principal
// is a super user in the harness). Run as a single-file program:
//
//   java -cp "$LIBS/*" VigilKafkaAdmin.java BOOTSTRAP COMMAND... [, COMMAND...]
//
// Commands (several, separated by a lone ","):
//   scram USER PASSWORD                      create or change USER's SCRAM-SHA-512 password
//   allow USER TYPE PATTERN NAME OPERATION   allow USER OPERATION on a resource
//                                            TYPE: topic|group|transactional-id|cluster
//                                            PATTERN: literal|prefixed
//                                            OPERATION: all|read|write|describe|create|alter|...
//   revoke USER                              delete every ACL of USER
import java.util.*;
import org.apache.kafka.clients.admin.*;
import org.apache.kafka.common.acl.*;
import org.apache.kafka.common.resource.*;

public class VigilKafkaAdmin {
    public static void main(String[] args) throws Exception {
        if (args.length < 2) {
            System.err.println("usage: VigilKafkaAdmin BOOTSTRAP COMMAND... [, COMMAND...]");
            System.exit(2);
        }
        Properties props = new Properties();
        props.put("bootstrap.servers", args[0]);
        props.put("default.api.timeout.ms", "30000");
        try (Admin admin = Admin.create(props)) {
            List<String> cmd = new ArrayList<>();
            for (int i = 1; i <= args.length; i++) {
                if (i == args.length || args[i].equals(",")) {
                    run(admin, cmd);
                    cmd.clear();
                } else {
                    cmd.add(args[i]);
                }
            }
        }
    }

    static void run(Admin admin, List<String> c) throws Exception {
        switch (c.get(0)) {
            case "scram" -> {
                var info = new ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096);
                admin.alterUserScramCredentials(List.of(new UserScramCredentialUpsertion(c.get(1), info, c.get(2))))
                    .all().get();
            }
            case "allow" -> {
                var type = switch (c.get(2)) {
                    case "topic" -> ResourceType.TOPIC;
                    case "group" -> ResourceType.GROUP;
                    case "transactional-id" -> ResourceType.TRANSACTIONAL_ID;
                    case "cluster" -> ResourceType.CLUSTER;
                    default -> throw new IllegalArgumentException("unknown resource type " + c.get(2));
                };
                var pattern = PatternType.fromString(c.get(3).toUpperCase());
                var op = AclOperation.fromString(c.get(5).toUpperCase().replace('-', '_'));
                if (pattern == PatternType.UNKNOWN || op == AclOperation.UNKNOWN) {
                    throw new IllegalArgumentException("unknown pattern or operation in " + c);
                }
                var binding = new AclBinding(new ResourcePattern(type, c.get(4), pattern),
                    new AccessControlEntry("User:" + c.get(1), "*", op, AclPermissionType.ALLOW));
                admin.createAcls(List.of(binding)).all().get();
            }
            case "revoke" -> {
                var filter = new AclBindingFilter(ResourcePatternFilter.ANY,
                    new AccessControlEntryFilter("User:" + c.get(1), null, AclOperation.ANY, AclPermissionType.ANY));
                admin.deleteAcls(List.of(filter)).all().get();
            }
            default -> throw new IllegalArgumentException("unknown command " + c);
        }
    }
}
