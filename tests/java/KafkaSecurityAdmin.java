// Sets up a secured Apache Kafka broker for the authentication tests: SCRAM users and ACLs,
// through Kafka's own Admin client (aiokafka has no ACL or SCRAM admin calls).
//
// Run with the broker's jars on the class path (Java runs a single source file directly):
//   java -cp 'LIBS/*' KafkaSecurityAdmin.java BOOTSTRAP COMMAND...
// Commands, applied in order:
//   scram USER PASSWORD MECHANISM      upsert a SCRAM credential (SCRAM-SHA-256 or -512)
//   allow PRINCIPAL TYPE NAME PATTERN OPERATION
//                                      add an ALLOW ACL, e.g. User:alice TOPIC orders LITERAL READ
// Prints "ok" when every command applied; any failure exits 1 with the reason.

import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.ScramCredentialInfo;
import org.apache.kafka.clients.admin.ScramMechanism;
import org.apache.kafka.clients.admin.UserScramCredentialAlteration;
import org.apache.kafka.clients.admin.UserScramCredentialUpsertion;
import org.apache.kafka.common.acl.AccessControlEntry;
import org.apache.kafka.common.acl.AclBinding;
import org.apache.kafka.common.acl.AclOperation;
import org.apache.kafka.common.acl.AclPermissionType;
import org.apache.kafka.common.resource.PatternType;
import org.apache.kafka.common.resource.ResourcePattern;
import org.apache.kafka.common.resource.ResourceType;

public class KafkaSecurityAdmin {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
        props.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "15000");
        List<UserScramCredentialAlteration> scram = new ArrayList<>();
        List<AclBinding> acls = new ArrayList<>();
        int i = 1;
        while (i < args.length) {
            String cmd = args[i];
            if (cmd.equals("scram")) {
                ScramMechanism mech = ScramMechanism.fromMechanismName(args[i + 3]);
                scram.add(new UserScramCredentialUpsertion(
                        args[i + 1], new ScramCredentialInfo(mech, 4096), args[i + 2]));
                i += 4;
            } else if (cmd.equals("allow")) {
                ResourcePattern pattern = new ResourcePattern(
                        ResourceType.fromString(args[i + 2]), args[i + 3],
                        PatternType.fromString(args[i + 4]));
                AccessControlEntry entry = new AccessControlEntry(
                        args[i + 1], "*", AclOperation.fromString(args[i + 5]),
                        AclPermissionType.ALLOW);
                acls.add(new AclBinding(pattern, entry));
                i += 6;
            } else {
                System.err.println("unknown command " + cmd);
                System.exit(2);
                return;
            }
        }
        try (Admin admin = Admin.create(props)) {
            if (!scram.isEmpty()) {
                admin.alterUserScramCredentials(scram).all().get(30, TimeUnit.SECONDS);
            }
            if (!acls.isEmpty()) {
                admin.createAcls(acls).all().get(30, TimeUnit.SECONDS);
            }
        } catch (Exception e) {
            Throwable cause = e.getCause() != null ? e.getCause() : e;
            System.err.println(cause.getClass().getSimpleName() + ": " + cause.getMessage());
            System.exit(1);
        }
        System.out.println("ok");
    }
}
